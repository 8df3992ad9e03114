"""Text messages (SMS) through the operator's provider: Alibaba Cloud SMS or Tencent Cloud SMS.

Providers in China send only approved templates under an approved sign (签名), so a message
here is a *kind* (login code, pay link …) and the template's variables, never free text.
The settings name the sign and one template per kind; :data:`TEMPLATE_PARAMETERS` says
which variables each kind fills, in the order Tencent's positional templates take them.

This module only sends. The outbox decides when, retries, and keeps secrets out of the
database; a sender is called outside any web request and may block on the network.
Both providers' own SDKs sign and send the calls; their API address is a setting, so the
tests point them at the loopback fake in ``tests/fake_apis.py``.

Neither provider deduplicates: Alibaba's ``OutId`` and Tencent's ``SessionContext`` are
echoed back (in the answer and the delivery receipts), and both documents say SendSms is
not idempotent. A message sent twice with the same ``out_id`` reaches the phone twice; the
id only lets the two be matched afterwards. Avoiding the second send is the outbox's job.
"""

from __future__ import annotations

import json
import re
from typing import Protocol
from urllib.parse import urlsplit

from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from flask import Flask
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

import config as settings

#: The message kinds that can go by SMS, and the template variables each one fills.
#: Alibaba's templates name them (``${code}``); Tencent's number them (``{1}``, ``{2}`` …)
#: in this order.
TEMPLATE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "login_code": ("code",),
    "pay_link": ("community", "link"),
    "reminder": ("community", "date"),
    "announcement": ("community", "title", "link"),
    "notice": ("community", "link"),
}
#: The timeouts of one call to a provider, in seconds.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 10
#: Where the sender is cached; a test may put its own sender there.
_EXTENSION = "qunmen.sms"
#: Tencent's codes for a call that got no usable answer.
_NETWORK_CODES = ("ClientNetworkError", "ServerNetworkError")
#: The SDKs' exceptions that carry the provider's own answer.
_ANSWERED = (AlibabaCloudException, TencentCloudSDKException)
_MAINLAND = re.compile(r"1\d{10}")
_INTERNATIONAL = re.compile(r"\+([1-9]\d{6,14})")


class SmsError(OSError):
    """The provider refused or could not be reached; the message says why (never a secret)."""


class SmsSender(Protocol):
    name: str
    #: The approved template for each message kind (None or absent: that kind is not sent).
    templates: dict[str, str | None]

    def send(self, phone: str, kind: str, params: dict[str, str], out_id: str) -> str:
        """Send the template configured for message ``kind`` (one of "login_code", "pay_link",
        "reminder", "announcement", "notice") to ``phone`` (a mainland number without +86, or
        +<country><number>) with ``params`` as the template's variables. ``out_id`` is our
        message id, passed as the provider's idempotency field (Alibaba ``OutId``, Tencent
        ``SessionContext``). Returns the provider's id for the message. Raises SmsError."""
        ...


def _template(templates: dict[str, str | None], kind: str, params: dict[str, str]) -> str:
    """The template id for ``kind``, once ``params`` are known to be what it fills."""
    if kind not in TEMPLATE_PARAMETERS:
        raise SmsError(f"{kind!r} is not an SMS message kind")
    template = templates.get(kind)
    if not template:
        raise SmsError(f"no template for kind {kind!r}: set SMS_TEMPLATE_{kind.upper()}")
    missing = [name for name in TEMPLATE_PARAMETERS[kind] if params.get(name) in (None, "")]
    if missing:
        raise SmsError(f"the {kind} template needs {', '.join(missing)}")
    return template


def _e164(phone: str) -> str:
    """``phone`` as +<country><number>; a bare number is a mainland one (+86)."""
    phone = phone.strip().replace(" ", "").replace("-", "")
    if _MAINLAND.fullmatch(phone):
        return "+86" + phone
    if _INTERNATIONAL.fullmatch(phone):
        return phone
    raise SmsError("the phone number is neither a mainland number nor +<country><number>")


def _endpoint(url: str) -> tuple[str, str]:
    """An endpoint setting (``https://host[:port]``, or a bare host meaning https) as the
    scheme and the host[:port] the SDKs take apart."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SmsError(f"{url!r} is not an SMS API address")
    return parts.scheme, parts.netloc


class AliyunSms:
    """Alibaba Cloud SMS (dysmsapi 2017-05-25 ``SendSms``) through its SDK, which signs with
    ACS3-HMAC-SHA256. The SDK's own retries stay off: the outbox retries."""

    name = "aliyun"

    def __init__(
        self,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        templates: dict[str, str | None],
        endpoint: str = settings.ALIYUN_SMS_ENDPOINT,
    ) -> None:
        # The SDKs' clients take a fifth of a second to import: only when SMS is configured.
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        scheme, host = _endpoint(endpoint)
        self.sign_name = sign_name
        self.templates = templates
        self._client = Client(
            Config(
                access_key_id=access_key_id,
                access_key_secret=access_key_secret,
                endpoint=host,
                protocol=scheme,
                connect_timeout=CONNECT_TIMEOUT * 1000,
                read_timeout=READ_TIMEOUT * 1000,
            )
        )

    def send(self, phone: str, kind: str, params: dict[str, str], out_id: str) -> str:
        from alibabacloud_dysmsapi20170525.models import SendSmsRequest

        template = _template(self.templates, kind, params)
        # Alibaba takes mainland numbers bare and others as <country><number>, no "+".
        number = _e164(phone).removeprefix("+86").removeprefix("+")
        variables = {name: str(params[name]) for name in TEMPLATE_PARAMETERS[kind]}
        request = SendSmsRequest(
            phone_numbers=number,
            sign_name=self.sign_name,
            template_code=template,
            template_param=json.dumps(variables, ensure_ascii=False),
            out_id=out_id,
        )
        try:
            response = self._client.send_sms(request)
        except Exception as error:
            # Not chained: the SDK's exception may hold the template variables (see below).
            raise SmsError(f"aliyun: {_describe(error)}") from None
        body = response.body
        if body is None or body.code != "OK":
            code, message = (body.code, body.message) if body else ("no answer", "")
            raise SmsError(f"aliyun refused the message: {code} {message}".rstrip())
        return str(body.biz_id)


class TencentSms:
    """Tencent Cloud SMS (2021-01-11 ``SendSms``) through its SDK, which signs with
    TC3-HMAC-SHA256. Template variables go positionally, in :data:`TEMPLATE_PARAMETERS`'s
    order."""

    name = "tencent"

    def __init__(
        self,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        templates: dict[str, str | None],
        region: str = "ap-guangzhou",
        endpoint: str = settings.TENCENT_SMS_ENDPOINT,
    ) -> None:
        from tencentcloud.common.credential import Credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.sms.v20210111.sms_client import SmsClient

        scheme, host = _endpoint(endpoint)
        self.sdk_app_id = sdk_app_id
        self.sign_name = sign_name
        self.templates = templates
        # HttpProfile takes the scheme as ``protocol`` (it has no ``scheme`` argument).
        profile = HttpProfile(protocol=scheme, endpoint=host, reqTimeout=READ_TIMEOUT)
        self._client = SmsClient(
            Credential(secret_id, secret_key), region, ClientProfile(httpProfile=profile)
        )

    def send(self, phone: str, kind: str, params: dict[str, str], out_id: str) -> str:
        from tencentcloud.sms.v20210111.models import SendSmsRequest

        template = _template(self.templates, kind, params)
        request = SendSmsRequest()
        request.SmsSdkAppId = self.sdk_app_id
        request.SignName = self.sign_name
        request.TemplateId = template
        request.TemplateParamSet = [str(params[name]) for name in TEMPLATE_PARAMETERS[kind]]
        request.PhoneNumberSet = [_e164(phone)]
        request.SessionContext = out_id
        try:
            response = self._client.SendSms(request)
        except Exception as error:
            raise SmsError(f"tencent: {_describe(error)}") from None
        statuses = response.SendStatusSet or []
        if not statuses:
            raise SmsError("tencent answered with no send status")
        status = statuses[0]
        if status.Code != "Ok":
            raise SmsError(f"tencent refused the message: {status.Code} {status.Message}")
        return str(status.SerialNo)


def _describe(error: Exception) -> str:
    """What an SDK's exception says, fit for a log: the provider's error code and message
    when the provider answered; when the call got no usable answer, only the failure's
    kind, because those texts carry the request's URL, and Alibaba's URL carries the
    template variables, a login code among them."""
    code = getattr(error, "code", None)
    if isinstance(error, _ANSWERED) and code not in _NETWORK_CODES:
        return f"{code} {getattr(error, 'message', None) or ''}".strip()
    cause = getattr(error, "inner_exception", None) or error
    return f"the call failed ({code or type(cause).__name__})"


def sms_sender(app: Flask) -> SmsSender | None:
    """The configured sender (cached in app.extensions), or None when SMS is not configured."""
    if _EXTENSION not in app.extensions:
        app.extensions[_EXTENSION] = _build(app.config)
    return app.extensions[_EXTENSION]


def _build(config) -> SmsSender | None:
    provider = config.get("SMS_PROVIDER")
    if not provider:
        return None
    templates = {kind: config.get(f"SMS_TEMPLATE_{kind.upper()}") for kind in TEMPLATE_PARAMETERS}
    if provider == "aliyun":
        return AliyunSms(
            config["ALIYUN_ACCESS_KEY_ID"],
            config["ALIYUN_ACCESS_KEY_SECRET"],
            config["SMS_SIGN_NAME"],
            templates,
            endpoint=config.get("ALIYUN_SMS_ENDPOINT") or settings.ALIYUN_SMS_ENDPOINT,
        )
    if provider == "tencent":
        return TencentSms(
            config["TENCENT_SECRET_ID"],
            config["TENCENT_SECRET_KEY"],
            config["TENCENT_SMS_SDK_APP_ID"],
            config["SMS_SIGN_NAME"],
            templates,
            region=config.get("TENCENT_SMS_REGION") or "ap-guangzhou",
            endpoint=config.get("TENCENT_SMS_ENDPOINT") or settings.TENCENT_SMS_ENDPOINT,
        )
    raise settings.SettingError(f"SMS_PROVIDER={provider!r} is not an SMS provider")
