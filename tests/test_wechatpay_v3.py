"""WeChat Pay API v3: the three ways to pay on a local fake of the v3 API that checks the
merchant's request signatures and signs its answers with the platform key; notifications
signed with a real RSA platform key and encrypted with real AES-256-GCM; refunds, query
and close, the trade bill; every forgery refused with nothing changed; and the choice
between v2 and v3 by the credentials configured."""

from __future__ import annotations

import base64
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.serving import make_server

from app import create_app
from config import SettingError
from core.clock import utcnow
from core.db import db
from membership.cli import seed_demo_community
from membership.models import InvitationStatus, Member, MembershipStatus, Tier
from payments.models import (
    InboxStatus,
    LedgerEntry,
    Order,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)
from payments.providers import EventKind, InvalidNotification, ProviderError
from payments.providers.wechatpay import WeChatPayProvider
from payments.providers.wechatpay_v3 import WeChatPayV3Provider
from tests import fake_apis
from tests.conftest import app_config, dispose_engines, fresh_database
from tests.helpers import (
    money_snapshot,
    open_payment,
    submit_form,
    submit_join,
    wechat_paid,
    wechat_v3_delivery,
    wechat_v3_paid,
    wechat_v3_refund,
    wechat_v3_refunded,
    wechat_v3_transaction,
)
from tests.test_reconciliation import BEIJING, wechat_bill, wechat_line
from tests.test_wechatpay import DESKTOP, IN_WECHAT, PHONE


@pytest.fixture(scope="module")
def app(app, _api_server):
    """The app of the other tests' database with WeChat Pay v3 credentials too (and the
    v2 key still set): v3 is the provider."""
    state, certs = _api_server
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    v3 = create_app(app_config(url, state, certs) | fake_apis.wechatpay_v3_settings(state.base_url))
    with v3.app_context():
        db.session.configure(join_transaction_mode="create_savepoint")
    yield v3
    dispose_engines(v3)


def join(client, user_agent=DESKTOP, **kwargs):
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return submit_join(client, "main", provider="wechatpay", **kwargs)


def the_payment() -> Payment:
    return db.session.scalars(sa.select(Payment)).one()


@pytest.fixture
def payment_id(app, client, demo, apis) -> int:
    """A prospect on a desktop, shown a WeChat Pay QR code for the ¥99 tier."""
    assert join(client).status_code == 302
    with app.app_context():
        return the_payment().id


def post(client, delivery: tuple[bytes, dict[str, str]]):
    body, headers = delivery
    return client.post("/webhooks/wechatpay", data=body, headers=headers)


def deliver(app, client, build=wechat_v3_paid, **fields):
    with app.app_context():
        delivery = build(the_payment(), **fields)
    return post(client, delivery)


def merchant_signed(message: str, signature: str) -> bool:
    try:
        fake_apis.WECHATPAY_V3_MCH_KEY.public_key().verify(
            base64.b64decode(signature), message.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except Exception:
        return False
    return True


def test_the_provider_is_v3_when_its_credentials_are_set(app):
    with app.app_context():
        from payments.providers import get_provider

        assert isinstance(get_provider("wechatpay"), WeChatPayV3Provider)


def test_desktop_native_qr_then_notification_admits(app, client, payment_id, apis):
    request = apis.last("/v3/pay/transactions/native")
    # The fake took it: the Authorization verified with the merchant's public key.
    assert request.headers["Authorization"].startswith("WECHATPAY2-SHA256-RSA2048 ")
    assert request.data["amount"] == {"total": 9900, "currency": "CNY"}
    assert request.data["time_expire"].endswith("+08:00")
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        # The URL names the community whose keys verify the notification.
        community_id = payment.order.community_id
        assert request.data["notify_url"] == f"http://qunmen.test/webhooks/wechatpay/{community_id}"
        assert payment.method == "native"
        assert (
            payment.provider_data["code_url"] == f"weixin://wxpay/bizpayurl?pr={payment.public_id}"
        )
        page = f"/pay/wechat/{payment.public_id}"
    assert "请用微信扫码支付" in client.get(page).text
    assert b"<svg" in client.get(f"{page}/qr.svg").data

    response = deliver(app, client)
    assert response.status_code == 204
    assert response.data == b""
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert state["ledger"] == [("payment", 9900)]
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.event_id) == (
            InboxStatus.PROCESSED,
            "pay:" + "4200" + f"{payment_id:020d}",
        )


def test_phone_browser_goes_to_h5_payment(app, client, demo, apis):
    response = join(client, PHONE)
    assert response.location.startswith("https://wx.tenpay.test/cgi-bin/mmpayweb-bin/checkmweb")
    redirect_url = parse_qs(urlsplit(response.location).query)["redirect_url"][0]
    assert redirect_url.startswith("http://qunmen.test/join/demo/status/")
    request = apis.last("/v3/pay/transactions/h5")
    assert request.data["scene_info"]["payer_client_ip"] == "127.0.0.1"


def test_inside_wechat_pays_with_jsapi_signed_with_rsa(app, client, demo, apis):
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    joined = submit_join(client, "main", provider="wechatpay", prove=False)
    to_wechat = client.get(joined.location)  # the join's silent OAuth gives the openid
    query = parse_qs(urlsplit(to_wechat.location).query)
    callback = urlsplit(query["redirect_uri"][0]).path
    back = client.get(callback, query_string={"code": "good-code", "state": query["state"][0]})
    assert back.status_code == 302
    request = apis.last("/v3/pay/transactions/jsapi")
    assert request.data["payer"] == {"openid": fake_apis.WECHAT_OPENID}
    assert "getBrandWCPayRequest" in client.get(back.location).text
    with app.app_context():
        params = the_payment().provider_data["jsapi"]
    assert params["signType"] == "RSA"
    assert params["package"] == "prepay_id=wx2026v3prepay0001"
    message = "".join(f"{params[k]}\n" for k in ("appId", "timeStamp", "nonceStr", "package"))
    assert merchant_signed(message, params["paySign"])
    assert not merchant_signed(message.replace("wx2026", "wx2027"), params["paySign"])


def test_same_notification_ten_times_counts_once(app, client, payment_id):
    with app.app_context():
        delivery = wechat_v3_paid(the_payment())
    for _ in range(10):
        assert post(client, delivery).status_code == 204
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["ledger"] == [("payment", 9900)]


def test_a_v2_notification_still_counts_and_gets_v2s_answer(app, client, payment_id):
    """Both keys set: a payment started under v2 before the switch is still notified in
    v2's XML, which the v2 provider reads; v2's and v3's words on the same payment count
    once."""
    with app.app_context():
        xml = wechat_paid(the_payment())
    response = client.post("/webhooks/wechatpay", data=xml, headers={"Content-Type": "text/xml"})
    assert response.status_code == 200
    assert b"<return_code><![CDATA[SUCCESS]]></return_code>" in response.data
    assert deliver(app, client).status_code == 204
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["ledger"] == [("payment", 9900)]
    forged = client.post("/webhooks/wechatpay", data=xml.replace(b"9900", b"1"))
    assert forged.status_code == 400
    assert b"FAIL" in forged.data


def _refused(app, client, delivery, why: str) -> None:
    before = money_snapshot(app)
    response = post(client, delivery)
    assert 400 <= response.status_code < 500
    assert response.json["code"] == "FAIL"
    assert why in response.json["message"]
    assert money_snapshot(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id.desc())).first()
        assert event.status is InboxStatus.REJECTED
        assert why in event.detail


def _now() -> int:
    return int(utcnow().timestamp())


OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"key": OTHER_KEY}, "signature does not match"),
        ({"serial": "PUB_KEY_ID_0119000001092026120200112233999999"}, "Wechatpay-Serial"),
        ({"serial": fake_apis.serial_of(fake_apis.WECHATPAY_PLATFORM_CERTIFICATE[0])}, "Serial"),
        ({"timestamp": -301}, "from its arrival"),
        ({"timestamp": 301}, "from its arrival"),
        ({"signature": "WECHATPAY/SIGNTEST/" + "A" * 300}, "SIGNTEST"),
        ({"signature": ""}, "signature does not match"),
        ({"api_v3_key": "another32characterAPIv3key012345"}, "does not decrypt"),
    ],
    ids=[
        "forged",
        "wrong serial",
        "certificate serial in public-key mode",
        "stale",
        "future",
        "signtest probe",
        "unsigned",
        "wrong APIv3 key",
    ],
)
def test_forged_stale_and_probe_notifications_are_refused(app, client, payment_id, options, why):
    if "timestamp" in options:
        options = {**options, "timestamp": _now() + options["timestamp"]}
    with app.app_context():
        delivery = wechat_v3_delivery(
            "TRANSACTION.SUCCESS", wechat_v3_transaction(the_payment()), **options
        )
    _refused(app, client, delivery, why)


@pytest.mark.parametrize("seconds", [-295, 295])
def test_five_minutes_either_way_is_accepted(app, client, payment_id, seconds):
    with app.app_context():
        delivery = wechat_v3_delivery(
            "TRANSACTION.SUCCESS", wechat_v3_transaction(the_payment()), timestamp=_now() + seconds
        )
    assert post(client, delivery).status_code == 204
    assert money_snapshot(app)["ledger"] == [("payment", 9900)]


def test_the_window_is_five_minutes_to_the_second(app):
    """At 300 s from its arrival a notification is taken; at 301 s it is not (checked at a
    fixed arrival time, which the request path cannot give)."""
    with app.app_context():
        provider = WeChatPayV3Provider.from_config(app.config)
        now = utcnow().replace(microsecond=0)
        payment = SimpleNamespace(public_id="p1", id=1, amount=9900, currency="CNY")
        for seconds, taken in ((300, True), (-300, True), (301, False), (-301, False)):
            body, headers = wechat_v3_delivery(
                "TRANSACTION.SUCCESS",
                wechat_v3_transaction(payment),
                timestamp=int(now.timestamp()) + seconds,
            )
            if taken:
                assert provider.parse_notification(body, headers, received_at=now).amount
            else:
                with pytest.raises(InvalidNotification, match="from its arrival"):
                    provider.parse_notification(body, headers, received_at=now)


def test_tampered_ciphertext_and_headers_are_refused(app, client, payment_id):
    with app.app_context():
        body, headers = wechat_v3_paid(the_payment())
    envelope = json.loads(body)
    ciphertext = base64.b64decode(envelope["resource"]["ciphertext"])
    envelope["resource"]["ciphertext"] = base64.b64encode(
        bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    ).decode()
    # The body changed, so the signature no longer matches it ...
    _refused(app, client, (json.dumps(envelope).encode(), headers), "signature does not match")
    # ... and re-signed by the platform (a test of the decryption alone) it does not decrypt.
    stamp, nonce = headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"]
    text = json.dumps(envelope)
    resigned = {
        **headers,
        "Wechatpay-Signature": fake_apis.wechatpay_v3_sign(
            fake_apis.WECHATPAY_PLATFORM_KEY, stamp, nonce, text
        ),
    }
    _refused(app, client, (text.encode(), resigned), "does not decrypt")
    wrong_type = {**headers, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA1024"}
    _refused(app, client, (body, wrong_type), "Wechatpay-Signature-Type")
    later = {**headers, "Wechatpay-Timestamp": str(int(stamp) + 1)}
    _refused(app, client, (body, later), "signature does not match")


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"appid": "wx_someone_else"}, "appid"),
        ({"mchid": "1234567890"}, "mchid"),
        ({"amount": {"total": 1, "payer_total": 1, "currency": "CNY"}}, "does not match"),
        ({"amount": {"total": 9900, "payer_total": 9900, "currency": "USD"}}, "does not match"),
        ({"amount": {"total": 9900, "payer_total": 9900, "currency": "XXX"}}, "currency"),
        ({"amount": {"total": "99.00", "payer_total": 9900, "currency": "CNY"}}, "whole number"),
        ({"amount": {"total": 9900, "payer_total": 9901, "currency": "CNY"}}, "payer_total"),
        ({"trade_state": "NOTPAY"}, "trade_state"),
    ],
)
def test_signed_but_wrong_notification_is_refused(app, client, payment_id, fields, why):
    with app.app_context():
        delivery = wechat_v3_paid(the_payment(), **fields)
    _refused(app, client, delivery, why)


def _refund_from_admin(logged_in, payment_id, amount="99.00"):
    data = {"amount": amount, "reason": "退群 · left the group"}
    return submit_form(logged_in, f"/admin/payments/payments/{payment_id}/refund", data)


def test_admin_refund_then_refund_notification(app, client, payment_id, apis, logged_in):
    assert deliver(app, client).status_code == 204
    response = _refund_from_admin(logged_in, payment_id)
    assert response.status_code == 302
    request = apis.last("/v3/refund/domestic/refunds")
    assert request.data["amount"] == {"refund": 9900, "total": 9900, "currency": "CNY"}
    assert request.data["transaction_id"] == f"4200{payment_id:020d}"
    with app.app_context():
        refund = db.session.scalars(sa.select(Refund)).one()
        assert refund.status is RefundStatus.REQUESTED  # PROCESSING: not until it is done
        assert request.data["out_refund_no"] == refund.public_id
        delivery = wechat_v3_refunded(refund.payment, 9900, refund.public_id)
    assert money_snapshot(app)["memberships"] == [MembershipStatus.ACTIVE]
    assert post(client, delivery).status_code == 204
    state = money_snapshot(app)
    assert state["refunds"] == [(9900, RefundStatus.SUCCEEDED)]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]
    assert post(client, delivery).status_code == 204  # again: nothing more
    assert money_snapshot(app) == state


def test_a_refund_answered_done_at_once(app, client, payment_id, apis, logged_in):
    apis.wechat_v3_refund_status = "SUCCESS"
    deliver(app, client)
    assert _refund_from_admin(logged_in, payment_id, "20.00").status_code == 302
    state = money_snapshot(app)
    assert state["refunds"] == [(2000, RefundStatus.SUCCEEDED)]
    assert state["memberships"] == [MembershipStatus.ACTIVE]  # partial: access kept
    with app.app_context():
        refund = db.session.scalars(sa.select(Refund)).one()
        delivery = wechat_v3_refunded(refund.payment, 2000, refund.public_id)
    assert post(client, delivery).status_code == 204
    assert money_snapshot(app) == state


def test_refund_result_before_the_payment_notification(app, client, payment_id):
    with app.app_context():
        refund_delivery = wechat_v3_refunded(the_payment(), 9900, "refund-made-at-wechat")
    assert post(client, refund_delivery).status_code == 204
    assert deliver(app, client).status_code == 204
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.CONFIRMED]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"mchid": "1234567890"}, "mchid"),
        ({"amount": {"total": 1, "refund": 1}}, "payment amount: 1 CNY does not match"),
        ({"refund_id": ""}, "ids"),
    ],
)
def test_wrong_refund_results_are_refused(app, client, payment_id, fields, why):
    """(A refund result proves its payment when it comes first: its total is checked
    then, by the payment services.)"""
    with app.app_context():
        resource = wechat_v3_refund(the_payment(), 9900, "r1", **fields)
    _refused(app, client, wechat_v3_delivery("REFUND.SUCCESS", resource), why)


def test_a_payment_that_is_not_ours_is_recorded_and_answered_204(app, client, payment_id):
    """Another system's sale on the same merchant: a refusal would come back for days."""
    before = money_snapshot(app)
    response = deliver(app, client, out_trade_no="not-ours")
    assert (response.status_code, response.data) == (204, b"")
    assert money_snapshot(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail) == (InboxStatus.IGNORED, "not one of our payments")


def test_an_event_we_do_not_act_on_is_taken(app, client, payment_id):
    with app.app_context():
        delivery = wechat_v3_delivery("TRANSACTION.REFUND_SOMETHING_NEW", {"x": 1})
    assert post(client, delivery).status_code == 204
    assert money_snapshot(app)["payment"] == [PaymentStatus.CREATED]


def test_settle_queries_v3_and_closes_expired(app, client, payment_id, apis, runner):
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert "已核实：0；" in result.output  # NOTPAY: still waiting
    with app.app_context():
        public_id = the_payment().public_id
    apis.wechat_v3_orders[public_id] |= {
        "trade_state": "SUCCESS",
        "transaction_id": "4200000000000000000042",
        "amount": {"total": 9900, "payer_total": 9900, "currency": "CNY"},
    }
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "已核实：1；" in result.output
    assert apis.last("/v3/pay/transactions/out-trade-no/").method == "GET"
    with app.app_context():
        assert db.session.scalars(sa.select(Member.number_label)).all() == ["0001"]
        assert db.session.scalars(sa.select(LedgerEntry.provider_transaction_id)).all() == [
            "4200000000000000000042"
        ]


def test_settle_closes_unpaid_payments_of_expired_orders(app, client, payment_id, apis, runner):
    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        order.expires_at = order.created_at - timedelta(seconds=1)
        db.session.commit()
        public_id = the_payment().public_id
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    close = apis.last(f"/v3/pay/transactions/out-trade-no/{public_id}/close")
    assert close.data == {"mchid": fake_apis.WECHAT_MCH_ID}
    assert apis.wechat_v3_orders[public_id]["trade_state"] == "CLOSED"
    with app.app_context():
        assert the_payment().status is PaymentStatus.EXPIRED


def test_reconcile_from_the_v3_trade_bill(app, client, payment_id, apis, runner):
    deliver(app, client)
    transaction = f"4200{payment_id:020d}"
    day = utcnow().astimezone(BEIJING).date()
    apis.wechat_v3_bills[day.isoformat()] = wechat_bill(wechat_line(transaction))
    result = runner.invoke(args=["payments", "reconcile", "wechatpay", "--day", str(day)])
    assert result.exit_code == 0, result.output
    assert f"{day}\t1\t1\t1\t0\t0\t0" in result.output  # theirs, ours, matched …
    assert "已记录手续费：1" in result.output
    assert apis.last("/v3/bill/tradebill").data["bill_type"] == "ALL"
    missing = runner.invoke(
        args=["payments", "reconcile", "wechatpay", "--day", str(day - timedelta(days=1))]
    )
    assert missing.exit_code == 1
    assert "NO_STATEMENT_EXIST" in missing.output


def test_a_bill_that_does_not_match_its_hash_is_refused(app, apis, monkeypatch):
    day = utcnow().astimezone(BEIJING).date()
    apis.wechat_v3_bills[day.isoformat()] = wechat_bill(wechat_line("4200000001"))
    with app.app_context():
        provider = WeChatPayV3Provider.from_config(app.config)
        assert provider.download_bill(day).startswith("交易时间")
        real_call = provider._call

        def tampered(function, **kwargs):
            answer = real_call(function, **kwargs)
            if kwargs.get("bill_type"):
                answer = {**answer, "hash_value": "0" * 40}
            return answer

        monkeypatch.setattr(provider, "_call", tampered)
        with pytest.raises(ProviderError, match="SHA1"):
            provider.download_bill(day)


# The fake checks the merchant's signature; the library checks the fake's -------------


def test_requests_not_signed_by_the_merchant_are_refused(app):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = dict(app.config) | {"WECHATPAY_MCH_PRIVATE_KEY": fake_apis.private_pem(other)}
    provider = WeChatPayV3Provider.from_config(config)
    with pytest.raises(ProviderError, match="SIGN_ERROR"):
        provider.close_payment(SimpleNamespace(public_id="p1"))


def test_answers_not_signed_by_the_platform_are_refused(app):
    config = dict(app.config) | {"WECHATPAY_PLATFORM_PUBLIC_KEY": fake_apis.public_pem(OTHER_KEY)}
    provider = WeChatPayV3Provider.from_config(config)
    with pytest.raises(ProviderError, match="verify the signature"):
        provider.close_payment(SimpleNamespace(public_id="p1"))


# Which version -----------------------------------------------------------------------


def _settings(app, **changes):
    return {k: v for k, v in (dict(app.config) | changes).items() if v is not None}


def test_v2_alone_is_v2_and_v3_wins_when_both_are_set(app):
    v2_only = _settings(
        app,
        WECHATPAY_V3_KEY=None,
        WECHATPAY_MCH_PRIVATE_KEY=None,
        WECHATPAY_MCH_CERT_SERIAL=None,
    )
    assert type(WeChatPayV3Provider.from_config(v2_only)) is WeChatPayProvider
    both = WeChatPayV3Provider.from_config(_settings(app))
    assert isinstance(both, WeChatPayV3Provider) and both._v2 is not None
    v3_only = WeChatPayV3Provider.from_config(_settings(app, WECHATPAY_API_KEY=None))
    assert isinstance(v3_only, WeChatPayV3Provider) and v3_only._v2 is None
    neither = _settings(app, WECHATPAY_API_KEY=None, WECHATPAY_V3_KEY=None)
    for name in ("WECHATPAY_MCH_PRIVATE_KEY", "WECHATPAY_MCH_CERT_SERIAL"):
        neither.pop(name)
    assert WeChatPayV3Provider.from_config(neither) is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"WECHATPAY_MCH_CERT_SERIAL": None}, "WECHATPAY_MCH_CERT_SERIAL"),
        ({"WECHATPAY_V3_KEY": None}, "WECHATPAY_V3_KEY"),
        ({"WECHATPAY_V3_KEY": "short"}, "WECHATPAY_V3_KEY"),
        ({"WECHATPAY_PLATFORM_PUBLIC_KEY_ID": None}, "WECHATPAY_PLATFORM_PUBLIC_KEY"),
        ({"WECHATPAY_MCH_PRIVATE_KEY": "/nonexistent/apiclient_key.pem"}, "PRIVATE_KEY"),
        ({"WECHATPAY_MCH_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nbad"}, "v3"),
    ],
)
def test_half_a_v3_configuration_stops_the_start(app, changes, named):
    with pytest.raises(SettingError, match=named):
        WeChatPayV3Provider.from_config(_settings(app, **changes))


def test_keys_may_be_given_as_files(app, tmp_path):
    key_file = tmp_path / "apiclient_key.pem"
    key_file.write_text(fake_apis.private_pem(fake_apis.WECHATPAY_V3_MCH_KEY))
    public_file = tmp_path / "pub_key.pem"
    public_file.write_text(fake_apis.public_pem(fake_apis.WECHATPAY_PLATFORM_KEY))
    provider = WeChatPayV3Provider.from_config(
        _settings(
            app,
            WECHATPAY_MCH_PRIVATE_KEY=str(key_file),
            WECHATPAY_PLATFORM_PUBLIC_KEY=str(public_file),
        )
    )
    provider.close_payment(SimpleNamespace(public_id="p1"))  # signed, and its answer verified


# Certificate mode -------------------------------------------------------------------


def test_certificate_mode_fetches_caches_and_refetches_at_most_every_five_minutes(
    app, apis, tmp_path
):
    """Without the platform public key, the library fetches the platform certificates
    (decrypting them with the APIv3 key) and keeps them in the folder; an unknown serial
    fetches them again, once per interval, so a forger cannot make us call WeChat Pay
    with every request."""
    cert_dir = tmp_path / "certs"
    config = _settings(
        app,
        WECHATPAY_PLATFORM_PUBLIC_KEY=None,
        WECHATPAY_PLATFORM_PUBLIC_KEY_ID=None,
        WECHATPAY_PLATFORM_CERT_DIR=str(cert_dir),
    )
    provider = WeChatPayV3Provider.from_config(config)

    def fetches() -> int:
        return sum(1 for r in apis.requests if r.path == "/v3/certificates")

    certificate, key = fake_apis.WECHATPAY_PLATFORM_CERTIFICATE
    serial = fake_apis.serial_of(certificate)
    assert fetches() == 1
    assert (cert_dir / f"{serial}.pem").exists()
    payment = SimpleNamespace(public_id="p1", id=1, amount=9900, currency="CNY")
    now = utcnow()

    def parse(key, serial):
        body, headers = wechat_v3_delivery(
            "TRANSACTION.SUCCESS", wechat_v3_transaction(payment), key=key, serial=serial
        )
        return provider.parse_notification(body, headers, received_at=now)

    assert parse(key, serial).kind is EventKind.PAYMENT_SUCCEEDED
    with pytest.raises(InvalidNotification, match="signature does not match"):
        parse(OTHER_KEY, serial)
    # WeChat Pay rotates its certificate: the new serial fetches them again.
    rotated, rotated_key = fake_apis.platform_certificate(
        0x5A00000000000000000000000000000000000001
    )
    apis.wechat_v3_certificates.append((rotated, rotated_key))
    assert parse(rotated_key, fake_apis.serial_of(rotated)).kind is EventKind.PAYMENT_SUCCEEDED
    assert fetches() == 2
    # A serial nobody holds: refused, and fetches nothing more within five minutes.
    for _ in range(3):
        with pytest.raises(InvalidNotification, match="Wechatpay-Serial"):
            parse(OTHER_KEY, "7A00000000000000000000000000000000000099")
    with pytest.raises(InvalidNotification, match="Wechatpay-Serial"):
        parse(OTHER_KEY, "not-hex")
    assert fetches() == 2
    # The next start reads them from the folder.
    WeChatPayV3Provider.from_config(config)
    assert fetches() == 2


def test_certificate_mode_with_a_wrong_apiv3_key_stops_the_start(app, tmp_path):
    config = _settings(
        app,
        WECHATPAY_V3_KEY="another32characterAPIv3key012345",
        WECHATPAY_PLATFORM_CERT_DIR=str(tmp_path),
    )
    config.pop("WECHATPAY_PLATFORM_PUBLIC_KEY")
    config.pop("WECHATPAY_PLATFORM_PUBLIC_KEY_ID")
    with pytest.raises(SettingError, match="platform certificate"):
        WeChatPayV3Provider.from_config(config)


@pytest.mark.committing
def test_v2_and_v3_deliveries_of_one_payment_at_once_count_once(tmp_path, _api_server):
    """25 v2 and 25 v3 deliveries of the same payment at once, each on its own connection
    (PostgreSQL: real row locks): all answered success, one payment confirmed, one
    member, one ledger entry."""
    state, _certs = _api_server
    settings = fake_apis.wechatpay_v3_settings(state.base_url)
    with fresh_database(tmp_path, _api_server, **settings) as app:
        with app.app_context():
            seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            payment = open_payment(tier, "wechatpay", 0)
            db.session.commit()
            deliveries = [(wechat_paid(payment), {"Content-Type": "text/xml"})] * 25
            deliveries += [wechat_v3_paid(payment)] * 25
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        start = threading.Barrier(len(deliveries))

        def send(delivery) -> int:
            body, headers = delivery
            start.wait()
            return requests.post(
                f"http://127.0.0.1:{server.server_port}/webhooks/wechatpay",
                data=body,
                headers={**headers, "Host": "qunmen.test"},
                timeout=60,
            ).status_code

        try:
            with ThreadPoolExecutor(max_workers=len(deliveries)) as pool:
                statuses = list(pool.map(send, deliveries))
        finally:
            server.shutdown()
        assert statuses == [200] * 25 + [204] * 25
        with app.app_context():
            assert db.session.scalars(sa.select(Payment.status)).all() == [PaymentStatus.CONFIRMED]
            assert db.session.scalars(sa.select(Member.number)).all() == [1]
            assert db.session.scalars(sa.select(LedgerEntry.kind)).all() == ["payment"]
            processed = db.session.scalars(
                sa.select(WebhookEvent.id).where(WebhookEvent.status == InboxStatus.PROCESSED)
            ).all()
            assert len(processed) == 1


def test_a_delivery_left_unfinished_is_replayed_as_of_its_arrival(app, client, payment_id, runner):
    """A v3 delivery stored an hour ago and never finished is replayed: its timestamp is
    checked against when it arrived, not against the replay's time."""
    arrived = utcnow() - timedelta(hours=1)
    with app.app_context():
        body, headers = wechat_v3_delivery(
            "TRANSACTION.SUCCESS",
            wechat_v3_transaction(the_payment()),
            timestamp=int(arrived.timestamp()),
        )
        db.session.add(
            WebhookEvent(
                provider="wechatpay",
                received_at=arrived,
                headers=headers,
                body=body,
                status=InboxStatus.RECEIVED,
            )
        )
        db.session.commit()
    result = runner.invoke(args=["payments", "replay", "--all"])
    assert result.exit_code == 0, result.output
    assert "processed" in result.output
    assert money_snapshot(app)["members"] == ["0001"]
    # The same body delivered now is an hour old: refused.
    _refused(app, client, (body, headers), "from its arrival")


def test_the_v3_secrets_never_reach_the_log(app, client, payment_id, caplog):
    caplog.set_level(logging.DEBUG)
    assert deliver(app, client).status_code == 204
    private_key = fake_apis.private_pem(fake_apis.WECHATPAY_V3_MCH_KEY)
    logging.getLogger("qunmen.test").warning(
        "a careless line: %s %s", fake_apis.WECHATPAY_V3_KEY, private_key
    )
    assert "a careless line" in caplog.text
    assert fake_apis.WECHATPAY_V3_KEY not in caplog.text
    assert private_key not in caplog.text
