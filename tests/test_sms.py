"""SMS through Alibaba Cloud and Tencent Cloud: the providers' real SDKs sign and send each
call to the loopback fake (``tests/fake_apis.py``), which checks the signature as the
provider would and records what it accepted."""

from __future__ import annotations

import json

import pytest
import requests
from flask import Flask

from app import create_app
from config import SMS_PROVIDER_SETTINGS, SettingError
from core import outbox
from core.db import db
from core.observability import SECRET_SETTINGS
from core.sms import TEMPLATE_PARAMETERS, AliyunSms, SmsError, TencentSms, sms_sender
from tests import fake_apis

PROVIDERS = ("aliyun", "tencent")
SIGN = "群门社区"
#: A template id per kind, as each provider spells them.
TEMPLATES = {
    "aliyun": {kind: f"SMS_4{n:05d}" for n, kind in enumerate(TEMPLATE_PARAMETERS)},
    "tencent": {kind: str(1900000 + n) for n, kind in enumerate(TEMPLATE_PARAMETERS)},
}
PHONE = "13800138000"
#: How each provider writes PHONE and an international number.
PROVIDER_PHONES = {
    "aliyun": {PHONE: PHONE, "+85261234567": "85261234567"},
    "tencent": {PHONE: "+8613800138000", "+85261234567": "+85261234567"},
}


def sms_settings(provider: str, apis: fake_apis.FakeAPIs) -> dict[str, object]:
    """The settings of ``provider`` with the fake's keys, its API on the fake server."""
    templates = {
        f"SMS_TEMPLATE_{kind.upper()}": template for kind, template in TEMPLATES[provider].items()
    }
    keys = {
        "aliyun": {
            "ALIYUN_ACCESS_KEY_ID": fake_apis.ALIYUN_ACCESS_KEY_ID,
            "ALIYUN_ACCESS_KEY_SECRET": fake_apis.ALIYUN_ACCESS_KEY_SECRET,
            "ALIYUN_SMS_ENDPOINT": apis.base_url,
        },
        "tencent": {
            "TENCENT_SECRET_ID": fake_apis.TENCENT_SECRET_ID,
            "TENCENT_SECRET_KEY": fake_apis.TENCENT_SECRET_KEY,
            "TENCENT_SMS_SDK_APP_ID": fake_apis.TENCENT_SMS_SDK_APP_ID,
            "TENCENT_SMS_REGION": "ap-guangzhou",
            "TENCENT_SMS_ENDPOINT": apis.base_url,
        },
    }[provider]
    return {"SMS_PROVIDER": provider, "SMS_SIGN_NAME": SIGN, **templates, **keys}


def sender_for(provider: str, apis: fake_apis.FakeAPIs, **overrides: object):
    """The sender ``sms_sender`` builds from ``provider``'s settings, changed by
    ``overrides``."""
    app = Flask(__name__)
    app.config.update({**sms_settings(provider, apis), **overrides})
    return sms_sender(app)


#: The order of Tencent's positional template variables ({1}, {2} …), as the operator's
#: templates are written: stated here, not read from the code under test.
TENCENT_ORDER = {
    "login_code": ("code",),
    "pay_link": ("community", "link"),
    "reminder": ("community", "date"),
    "announcement": ("community", "title", "link"),
    "notice": ("community", "link"),
}


def expected_params(provider: str, kind: str, params: dict[str, str]):
    """What the provider should receive as the template's variables: Alibaba's by name,
    Tencent's in the template's order."""
    if provider == "aliyun":
        return params
    return [params[name] for name in TENCENT_ORDER[kind]]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_login_code_goes_through_the_sdk_signed(apis, provider):
    sender = sender_for(provider, apis)
    assert sender.name == provider

    provider_id = sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")

    assert apis.sms_messages == [
        {
            "provider": provider,
            "phone": PROVIDER_PHONES[provider][PHONE],
            "sign": SIGN,
            "template": TEMPLATES[provider]["login_code"],
            "params": expected_params(provider, "login_code", {"code": "482913"}),
            "out_id": "outbox-17",
        }
    ]
    assert provider_id and provider_id != "None"
    algorithm = {"aliyun": "ACS3-HMAC-SHA256 ", "tencent": "TC3-HMAC-SHA256 "}[provider]
    assert apis.requests[-1].headers["Authorization"].startswith(algorithm)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", list(TENCENT_ORDER))
def test_each_kind_fills_its_template(apis, provider, kind):
    values = {
        "code": "000417",
        "community": "读书会",
        "link": "https://join.example.com/c/books?t=abc&x=1",
        "date": "2026-12-31",
        "title": "新课：精读《红楼梦》",
    }
    params = {name: values[name] for name in TENCENT_ORDER[kind]}

    sender_for(provider, apis).send("+85261234567", kind, params, f"outbox-{kind}")

    (message,) = apis.sms_messages
    assert message["template"] == TEMPLATES[provider][kind]
    assert message["params"] == expected_params(provider, kind, params)
    assert message["phone"] == PROVIDER_PHONES[provider]["+85261234567"]
    assert message["out_id"] == f"outbox-{kind}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refusal_raises_and_the_next_try_goes(apis, provider):
    sender = sender_for(provider, apis)
    apis.sms_errors = 1

    with pytest.raises(SmsError, match=r"refused the message: (isv|LimitExceeded)"):
        sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")
    assert apis.sms_messages == []

    sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")
    assert [m["out_id"] for m in apis.sms_messages] == ["outbox-17"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_same_out_id_twice_is_sent_twice(apis, provider):
    """Neither provider deduplicates by OutId or SessionContext (their documents say SendSms
    is not idempotent), so neither does the fake: the outbox must not send twice."""
    sender = sender_for(provider, apis)

    first = sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")
    second = sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")

    assert first != second
    assert [m["out_id"] for m in apis.sms_messages] == ["outbox-17", "outbox-17"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_outage_raises(apis, provider):
    apis.sms_down = True

    with pytest.raises(SmsError) as raised:
        sender_for(provider, apis).send(PHONE, "login_code", {"code": "482913"}, "outbox-17")

    assert apis.sms_messages == []
    assert "482913" not in str(raised.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_unreachable_provider_raises_without_the_code(apis, provider):
    """The SDKs' own error names the URL, and Alibaba's URL holds the template variables."""
    endpoint = {"aliyun": "ALIYUN_SMS_ENDPOINT", "tencent": "TENCENT_SMS_ENDPOINT"}[provider]
    sender = sender_for(provider, apis, **{endpoint: "http://127.0.0.1:1"})

    with pytest.raises(SmsError, match="the call failed") as raised:
        sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")

    assert "482913" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize(
    ("provider", "setting", "error"),
    [
        ("aliyun", "ALIYUN_ACCESS_KEY_SECRET", "SignatureDoesNotMatch"),
        ("aliyun", "ALIYUN_ACCESS_KEY_ID", "InvalidAccessKeyId.NotFound"),
        ("tencent", "TENCENT_SECRET_KEY", "AuthFailure.SignatureFailure"),
        ("tencent", "TENCENT_SECRET_ID", "AuthFailure.SecretIdNotFound"),
    ],
)
def test_a_wrong_key_is_refused_by_the_provider(apis, provider, setting, error):
    sender = sender_for(provider, apis, **{setting: "another-key-not-the-fakes"})

    with pytest.raises(SmsError, match=error) as raised:
        sender.send(PHONE, "login_code", {"code": "482913"}, "outbox-17")

    assert apis.sms_messages == []
    assert "another-key-not-the-fakes" not in str(raised.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_request_changed_after_signing_is_refused(apis, provider):
    """The fake checks the signature over what is sent, not only the key: the SDK's signed
    request replayed with another phone number is refused."""
    sender_for(provider, apis).send(PHONE, "login_code", {"code": "482913"}, "outbox-17")
    signed = apis.requests[-1]
    headers = {
        name: value
        for name, value in signed.headers.items()
        if name.lower() not in ("content-length", "accept-encoding", "connection")
    }
    if provider == "aliyun":
        query = {**signed.data, "PhoneNumbers": "13900139000"}
        answer = requests.post(apis.base_url + "/", params=query, headers=headers, timeout=5)
        assert answer.json()["Code"] == "SignatureDoesNotMatch"
    else:
        body = json.dumps({**signed.data, "PhoneNumberSet": ["+8613900139000"]})
        answer = requests.post(apis.base_url + "/", data=body, headers=headers, timeout=5)
        assert answer.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert len(apis.sms_messages) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_kind_without_a_template_raises_before_any_call(apis, provider):
    sender = sender_for(provider, apis, SMS_TEMPLATE_PAY_LINK=None)

    with pytest.raises(SmsError, match="no template for kind 'pay_link'"):
        sender.send(PHONE, "pay_link", {"community": "读书会", "link": "https://x.test"}, "o-1")

    assert apis.requests == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_params_and_bad_numbers_raise_before_any_call(apis, provider):
    sender = sender_for(provider, apis)

    with pytest.raises(SmsError, match="needs link"):
        sender.send(PHONE, "pay_link", {"community": "读书会"}, "o-1")
    with pytest.raises(SmsError, match="not an SMS message kind"):
        sender.send(PHONE, "birthday", {}, "o-2")
    with pytest.raises(SmsError, match="phone number"):
        sender.send("wxid_abc123", "login_code", {"code": "482913"}, "o-3")

    assert apis.requests == []


def test_no_provider_means_no_sender_and_the_sender_is_built_once(apis):
    unconfigured = Flask(__name__)
    assert sms_sender(unconfigured) is None

    for provider, kind in (("aliyun", AliyunSms), ("tencent", TencentSms)):
        app = Flask(__name__)
        app.config.update(sms_settings(provider, apis))
        sender = sms_sender(app)
        assert isinstance(sender, kind)
        assert sms_sender(app) is sender


def test_the_app_starts_with_a_provider_and_sends_through_it(apis, monkeypatch, tmp_path):
    monkeypatch.delenv("SMS_PROVIDER", raising=False)
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key",
            "PUBLIC_BASE_URL": "http://qunmen.test",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'sms.sqlite3'}",
            "QUEUE_IN_PROCESS": False,
            **sms_settings("aliyun", apis),
        }
    )
    sender = sms_sender(app)

    assert isinstance(sender, AliyunSms)
    sender.send(PHONE, "reminder", {"community": "读书会", "date": "2026-12-31"}, "o-9")
    assert apis.sms_messages[0]["template"] == TEMPLATES["aliyun"]["reminder"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_outbox_sends_a_login_code_by_sms(app, apis, monkeypatch, provider):
    """Through the lead's queue: a login code to a phone leaves by SMS, our message id as
    the provider's OutId/SessionContext, and the code is gone from the row once sent."""
    # Put there for this test only (setitem takes it away after), as sms_sender caches it.
    monkeypatch.setitem(app.extensions, "qunmen.sms", sender_for(provider, apis))
    with app.app_context():
        message = outbox.enqueue(
            outbox.MessageKind.LOGIN_CODE,
            [["sms", PHONE]],
            "登录验证码 · Login code",
            "482913",
            params={"code": "482913"},
            secret=True,
        )
        db.session.commit()
        assert outbox.drain_outbox() == 1
        db.session.refresh(message)
        assert (message.status, message.channel) == ("sent", "sms")
        assert "482913" not in f"{message.body} {message.params}"
    (sent,) = apis.sms_messages
    assert sent["out_id"] == str(message.id)
    assert sent["params"] == expected_params(provider, "login_code", {"code": "482913"})


@pytest.mark.parametrize(
    ("provider", "unset", "named"),
    [
        ("aliyun", ("ALIYUN_ACCESS_KEY_ID", "ALIYUN_ACCESS_KEY_SECRET"), "ALIYUN_ACCESS_KEY_ID"),
        ("aliyun", ("ALIYUN_ACCESS_KEY_SECRET",), "ALIYUN_ACCESS_KEY_SECRET"),
        ("aliyun", ("SMS_SIGN_NAME",), "SMS_SIGN_NAME"),
        ("tencent", ("TENCENT_SECRET_KEY",), "TENCENT_SECRET_KEY"),
        ("tencent", ("TENCENT_SMS_SDK_APP_ID",), "TENCENT_SMS_SDK_APP_ID"),
    ],
)
def test_startup_refuses_a_provider_without_its_keys(
    apis, monkeypatch, tmp_path, provider, unset, named
):
    for name in ("SMS_PROVIDER", "SMS_SIGN_NAME", *sum(SMS_PROVIDER_SETTINGS.values(), ())):
        monkeypatch.delenv(name, raising=False)
    settings = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "PUBLIC_BASE_URL": "http://qunmen.test",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'sms.sqlite3'}",
        **sms_settings(provider, apis),
    }
    for name in unset:
        settings[name] = None

    with pytest.raises(SettingError, match=f"{named} is not set: SMS_PROVIDER={provider}"):
        create_app(settings)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_startup_refuses_a_malformed_api_address(apis, monkeypatch, provider):
    setting = {"aliyun": "ALIYUN_SMS_ENDPOINT", "tencent": "TENCENT_SMS_ENDPOINT"}[provider]
    monkeypatch.delenv("SMS_PROVIDER", raising=False)
    with pytest.raises(SettingError, match=f"{setting}='ftp://sms.example.com/api'"):
        create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "test-secret-key",
                "PUBLIC_BASE_URL": "http://qunmen.test",
                **sms_settings(provider, apis),
                setting: "ftp://sms.example.com/api",
            }
        )


def test_startup_refuses_an_unknown_provider(monkeypatch):
    monkeypatch.delenv("SMS_PROVIDER", raising=False)
    with pytest.raises(SettingError, match="SMS_PROVIDER='twilio' is not an SMS provider"):
        create_app(
            {
                "TESTING": True,
                "SECRET_KEY": "test-secret-key",
                "PUBLIC_BASE_URL": "http://qunmen.test",
                "SMS_PROVIDER": "twilio",
            }
        )


def test_the_providers_secrets_are_redacted_from_logs():
    assert {"ALIYUN_ACCESS_KEY_SECRET", "TENCENT_SECRET_KEY"} <= set(SECRET_SETTINGS)
