"""A local stand-in for the Stripe and WeChat Pay APIs (and Alibaba and Tencent Cloud SMS),
on a loopback port.

The providers' SDKs talk to it through the API-base settings, so their real request and
signing code runs. It checks what WeChat Pay would check (the request's signature) and
signs its answers with the merchant key, as WeChat Pay does; it records every request for
the tests to inspect. No test reaches the internet.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import xmltodict
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto
from wechatpy.pay.utils import calculate_signature, dict_to_xml

WECHAT_APP_ID = "wx0123456789abcdef"
WECHAT_APP_SECRET = "test-app-secret"
#: The jsapi_ticket the fake official account gives (the JS-SDK's share settings).
WECHAT_JSAPI_TICKET = "fake-jsapi-ticket-0001"
WECHAT_MCH_ID = "1900000109"
WECHAT_API_KEY = "0123456789abcdef0123456789abcdef"
WECHAT_OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def openid_for(code: str) -> str | None:
    """The openid the fake OAuth gives for ``code``: ``good-code`` is
    :data:`WECHAT_OPENID`'s, ``good-code-<name>`` another person's; anything else is
    refused."""
    if code == "good-code":
        return WECHAT_OPENID
    if code.startswith("good-code-"):
        return f"{WECHAT_OPENID[:16]}{code.removeprefix('good-code-')}"
    return None


TELEGRAM_BOT_TOKEN = "123456789:AAH-test-token"
STRIPE_SECRET_KEY = "sk_test_qunmen"
STRIPE_WEBHOOK_SECRET = "whsec_test_qunmen"
ALIYUN_ACCESS_KEY_ID = "LTAI5tQunmenTestKeyId"
ALIYUN_ACCESS_KEY_SECRET = "qunmen-test-aliyun-access-key-secret"
TENCENT_SECRET_ID = "AKIDqunmentestsecretid0123456789"
TENCENT_SECRET_KEY = "qunmen-test-tencent-secret-key"
TENCENT_SMS_SDK_APP_ID = "1400000001"
#: How far a signed request's clock may be from ours, as the providers allow.
_ALIYUN_CLOCK_SKEW = 15 * 60
_TENCENT_CLOCK_SKEW = 5 * 60
_ALIYUN_AUTHORIZATION = re.compile(
    r"ACS3-HMAC-SHA256 Credential=(?P<key>[^,]*),SignedHeaders=(?P<headers>[^,]*),"
    r"Signature=(?P<signature>[0-9a-f]+)"
)
_TENCENT_AUTHORIZATION = re.compile(
    r"TC3-HMAC-SHA256 Credential=(?P<id>[^/]*)/(?P<date>[^/]*)/(?P<service>[^/]*)/tc3_request,"
    r" SignedHeaders=(?P<headers>[^,]*), Signature=(?P<signature>[0-9a-f]+)"
)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    data: dict[str, Any]


@dataclass
class FakeAPIs:
    """What the fake server knows: requests received, and state the tests can set."""

    requests: list[Recorded] = field(default_factory=list)
    #: WeChat order query answers, by out_trade_no: trade_state and more fields.
    wechat_orders: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Stripe checkout sessions, by id.
    stripe_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: WeChat Pay bills, by bill_date (``20261124``): the text downloadbill answers.
    wechat_bills: dict[str, str] = field(default_factory=dict)
    #: Stripe refund status to answer with.
    stripe_refund_status: str = "succeeded"
    #: When set, the Telegram Bot API answers every call with this error.
    telegram_error: str | None = None
    #: Text messages the fake SMS providers accepted, in order: provider, phone, sign,
    #: template, params (a dict for Alibaba, a list for Tencent) and out_id (the idempotency
    #: field: Alibaba's OutId, Tencent's SessionContext).
    sms_messages: list[dict[str, Any]] = field(default_factory=list)
    #: The fake SMS providers refuse this many messages (a rate limit), then accept again.
    sms_errors: int = 0
    #: While set, the fake SMS providers fail every call with HTTP 503 (an outage).
    sms_down: bool = False
    #: The fake WeCom (see :class:`FakeWeCom`).
    wecom: FakeWeCom = field(default_factory=lambda: FakeWeCom())
    base_url: str = ""
    #: WeChat Pay API v3: orders by out_trade_no, as its query answers them (the tests may
    #: change trade_state); bills by day (``2026-11-24``); the status a refund request is
    #: answered with; the platform certificates ``/v3/certificates`` gives (with their
    #: keys), the first signing the answers of merchants in certificate mode.
    wechat_v3_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    wechat_v3_bills: dict[str, str] = field(default_factory=dict)
    wechat_v3_refund_status: str = "PROCESSING"
    wechat_v3_certificates: list[tuple[x509.Certificate, rsa.RSAPrivateKey]] = field(
        default_factory=list
    )
    #: Other accounts than the install's the fake knows (communities' own): Stripe secret
    #: keys it accepts, WeChat Pay v2 merchants by mch_id (app id, API key). Which one a
    #: call used is in its recorded ``Authorization`` header (Stripe) or ``mch_id``.
    stripe_keys: set[str] = field(default_factory=set)
    wechat_merchants: dict[str, tuple[str, str]] = field(default_factory=dict)

    def reset(self) -> None:
        self.sms_messages.clear()
        self.sms_errors = 0
        self.sms_down = False
        self.requests.clear()
        self.wechat_orders.clear()
        self.wechat_bills.clear()
        self.stripe_sessions.clear()
        self.stripe_refund_status = "succeeded"
        self.telegram_error = None
        self.wechat_v3_orders.clear()
        self.wechat_v3_bills.clear()
        self.wechat_v3_refund_status = "PROCESSING"
        self.wechat_v3_certificates[:] = [WECHATPAY_PLATFORM_CERTIFICATE]
        self.wecom.reset()
        self.stripe_keys.clear()
        self.wechat_merchants.clear()

    def last(self, path_prefix: str) -> Recorded:
        return next(r for r in reversed(self.requests) if r.path.startswith(path_prefix))


def _wechat_answer(
    fields: dict[str, str],
    merchant: tuple[str, str, str] = (WECHAT_APP_ID, WECHAT_MCH_ID, WECHAT_API_KEY),
) -> bytes:
    """A v2 answer signed as ``merchant`` (app id, merchant id, API key) gets it."""
    app_id, mch_id, api_key = merchant
    data = {
        "return_code": "SUCCESS",
        "result_code": "SUCCESS",
        "appid": app_id,
        "mch_id": mch_id,
        "nonce_str": "fakeapinonce",
        **fields,
    }
    return dict_to_xml(data, calculate_signature(data, api_key)).encode()


def _handler(state: FakeAPIs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: dict[str, Any], status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.startswith("/v3/"):
                return _wechat_v3(self, state, b"")
            query = dict(parse_qsl(url.query))
            state.requests.append(Recorded("GET", url.path, dict(self.headers), query))
            if url.path.startswith("/wecom/"):
                return self._json(_wecom_answer(state, url.path, query, {}))
            if url.path == "/sns/oauth2/access_token":
                openid = openid_for(query.get("code", ""))
                if query.get("secret") != WECHAT_APP_SECRET or openid is None:
                    return self._json({"errcode": 40029, "errmsg": "invalid code"})
                return self._json(
                    {
                        "access_token": "token",
                        "expires_in": 7200,
                        "refresh_token": "refresh",
                        "openid": openid,
                        "scope": "snsapi_base",
                    }
                )
            if url.path == "/cgi-bin/token":
                if query.get("secret") != WECHAT_APP_SECRET:
                    return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                return self._json({"access_token": "fake-access-token", "expires_in": 7200})
            if url.path == "/cgi-bin/ticket/getticket":  # the JS-SDK's ticket (share settings)
                if query.get("access_token") != "fake-access-token" or query.get("type") != "jsapi":
                    return self._json({"errcode": 40001, "errmsg": "invalid credential"})
                return self._json(
                    {
                        "errcode": 0,
                        "errmsg": "ok",
                        "ticket": WECHAT_JSAPI_TICKET,
                        "expires_in": 7200,
                    }
                )
            if url.path.startswith("/v1/checkout/sessions/"):
                session = state.stripe_sessions.get(url.path.rsplit("/", 1)[1])
                if session is None:
                    return self._json({"error": {"message": "No such session"}}, 404)
                return self._json(session)
            if url.path.startswith("/v1/payment_intents/"):
                intent_id = url.path.rsplit("/", 1)[1]
                if intent_id.startswith("pi_other_"):
                    # Another system's sale on the same account: no metadata of ours.
                    return self._json({"id": intent_id, "object": "payment_intent", "metadata": {}})
                for session in state.stripe_sessions.values():
                    # Stripe makes the intent when the payer pays; here it is named after
                    # our payment, as the tests' events name it.
                    if intent_id == f"pi_{session['metadata']['payment']}":
                        return self._json(
                            {
                                "id": intent_id,
                                "object": "payment_intent",
                                "metadata": session["metadata"],
                            }
                        )
                # As Stripe answers it: a definite "not found", not an outage.
                missing = {
                    "code": "resource_missing",
                    "message": f"No such payment_intent: '{intent_id}'",
                    "param": "id",
                    "type": "invalid_request_error",
                }
                return self._json({"error": missing}, 404)
            return self._json({"error": {"message": "not found"}}, 404)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self._body()
            # Both SMS APIs post to "/" on their own host; the signed headers tell them apart.
            if self.headers.get("X-TC-Action"):
                return self._tencent_sms(url.path, body)
            if self.headers.get("x-acs-action"):
                return self._aliyun_sms(url.path, url.query, body)
            if url.path.startswith("/wecom/"):
                data = json.loads(body or b"{}")
                state.requests.append(Recorded("POST", url.path, dict(self.headers), data))
                return self._json(_wecom_answer(state, url.path, dict(parse_qsl(url.query)), data))
            if url.path.startswith("/v1/"):
                return self._stripe(url.path, dict(parse_qsl(body.decode())))
            if url.path.startswith("/v3/"):
                return _wechat_v3(self, state, body)
            if url.path.startswith("/bot"):
                return self._telegram(url.path, json.loads(body or b"{}"))
            if url.path == "/cgi-bin/message/template/send":
                query = dict(parse_qsl(url.query))
                state.requests.append(
                    Recorded("POST", url.path, dict(self.headers), json.loads(body))
                )
                if query.get("access_token") != "fake-access-token":
                    return self._json({"errcode": 40014, "errmsg": "invalid access_token"})
                return self._json({"errcode": 0, "errmsg": "ok", "msgid": 200228332})
            return self._wechat(url.path, body)

        def _stripe(self, path: str, form: dict[str, str]) -> None:
            state.requests.append(Recorded("POST", path, dict(self.headers), form))
            keys = {STRIPE_SECRET_KEY, *state.stripe_keys}
            if self.headers.get("Authorization") not in {f"Bearer {key}" for key in keys}:
                return self._json({"error": {"message": "Invalid API Key"}}, 401)
            if path == "/v1/checkout/sessions":
                session_id = f"cs_test_{len(state.stripe_sessions) + 1:04d}"
                session = {
                    "id": session_id,
                    "object": "checkout.session",
                    "url": f"https://checkout.stripe.test/c/pay/{session_id}",
                    "status": "open",
                    "payment_status": "unpaid",
                    "amount_total": int(form["line_items[0][price_data][unit_amount]"]),
                    "currency": form["line_items[0][price_data][currency]"],
                    "client_reference_id": form["client_reference_id"],
                    "metadata": {
                        "order": form["metadata[order]"],
                        "payment": form["metadata[payment]"],
                    },
                    "payment_intent": None,
                }
                state.stripe_sessions[session_id] = session
                return self._json(session)
            if path.startswith("/v1/checkout/sessions/") and path.endswith("/expire"):
                session = state.stripe_sessions[path.split("/")[4]]
                session["status"] = "expired"
                return self._json(session)
            if path == "/v1/refunds":
                refund_id = f"re_test_{len(state.requests):04d}"
                return self._json(
                    {
                        "id": refund_id,
                        "object": "refund",
                        "amount": int(form["amount"]),
                        "payment_intent": form["payment_intent"],
                        "status": state.stripe_refund_status,
                    }
                )
            return self._json({"error": {"message": "not found"}}, 404)

        def _telegram(self, path: str, params: dict[str, Any]) -> None:
            state.requests.append(Recorded("POST", path, dict(self.headers), params))
            token, _, method = path.removeprefix("/bot").partition("/")
            if token != TELEGRAM_BOT_TOKEN:
                return self._json({"ok": False, "error_code": 401, "description": "Unauthorized"})
            if state.telegram_error:
                return self._json(
                    {"ok": False, "error_code": 400, "description": state.telegram_error}
                )
            if method in ("approveChatJoinRequest", "banChatMember", "unbanChatMember"):
                return self._json({"ok": True, "result": True})
            if method == "createChatInviteLink":
                link = f"https://t.me/+fake{len(state.requests):06d}"
                return self._json(
                    {
                        "ok": True,
                        "result": {
                            "invite_link": link,
                            "creates_join_request": params.get("creates_join_request", False),
                            "name": params.get("name"),
                            "is_revoked": False,
                        },
                    }
                )
            if method == "revokeChatInviteLink":
                return self._json(
                    {
                        "ok": True,
                        "result": {"invite_link": params["invite_link"], "is_revoked": True},
                    }
                )
            return self._json({"ok": False, "error_code": 404, "description": "Not Found"})

        def _sms_answer(self) -> str | None:
            """ "down" or "refuse" when the tests have the fake SMS providers fail."""
            if state.sms_down:
                return "down"
            if state.sms_errors > 0:
                state.sms_errors -= 1
                return "refuse"
            return None

        def _aliyun_sms(self, path: str, query_string: str, body: bytes) -> None:
            """Alibaba Cloud SMS (dysmsapi 2017-05-25), signed with ACS3-HMAC-SHA256 (the
            "V3" signature): the request is checked the way Alibaba's gateway checks it."""
            query = dict(parse_qsl(query_string, keep_blank_values=True))
            params = {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}
            state.requests.append(Recorded("POST", path, dict(self.headers), params))

            def error(status: int, code: str, message: str) -> None:
                answer = {"Code": code, "Message": message, "RequestId": "FAKE-ALIYUN-ERROR"}
                self._json(answer, status)

            refusal = self._aliyun_signature_refusal(path, query, body)
            if refusal:
                return error(*refusal)
            if self.headers.get("x-acs-action") != "SendSms":
                return error(404, "InvalidAction.NotFound", "Specified api is not found")
            if self.headers.get("x-acs-version") != "2017-05-25":
                return error(400, "InvalidVersion", "Specified parameter Version is not valid.")
            outcome = self._sms_answer()
            if outcome == "down":
                return error(503, "ServiceUnavailable", "The request has failed")
            if outcome == "refuse":
                return self._json(
                    {
                        "Code": "isv.BUSINESS_LIMIT_CONTROL",
                        "Message": "触发小时级流控Permits:5",
                        "RequestId": "FAKE-ALIYUN-LIMIT",
                    }
                )
            try:
                template_params = json.loads(params.get("TemplateParam") or "{}")
            except ValueError:
                return self._json(
                    {"Code": "isv.INVALID_JSON_PARAM", "Message": "JSON参数不合法，只接受字符串值"}
                )
            state.sms_messages.append(
                {
                    "provider": "aliyun",
                    "phone": params.get("PhoneNumbers"),
                    "sign": params.get("SignName"),
                    "template": params.get("TemplateCode"),
                    "params": template_params,
                    "out_id": params.get("OutId"),
                }
            )
            biz_id = f"{900000000 + len(state.sms_messages)}^0"
            self._json(
                {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": "FAKE-ALIYUN-OK"}
            )

        def _aliyun_signature_refusal(
            self, path: str, query: dict[str, str], body: bytes
        ) -> tuple[int, str, str] | None:
            """Why Alibaba's gateway would refuse this request's signature, or None."""
            match = _ALIYUN_AUTHORIZATION.fullmatch(self.headers.get("Authorization", ""))
            if not match:
                return 400, "IncompleteSignature", "The request signature is not well-formed"
            if match["key"] != ALIYUN_ACCESS_KEY_ID:
                return 404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."
            signed = match["headers"].split(";")
            # Every common header but Authorization must be signed.
            required = {
                "host",
                "x-acs-action",
                "x-acs-version",
                "x-acs-date",
                "x-acs-signature-nonce",
                "x-acs-content-sha256",
            }
            if not required <= set(signed) or signed != sorted(signed):
                return 400, "IncompleteSignature", "The request signature is not well-formed"
            payload_hash = hashlib.sha256(body).hexdigest()
            if self.headers.get("x-acs-content-sha256") != payload_hash:
                return 400, "IncompleteSignature", "x-acs-content-sha256 does not match the body"
            try:
                signed_at = datetime.strptime(self.headers["x-acs-date"], "%Y-%m-%dT%H:%M:%S%z")
            except (KeyError, ValueError):
                return 400, "InvalidTimeStamp.Format", "Specified timestamp is not valid"
            if abs(time.time() - signed_at.timestamp()) > _ALIYUN_CLOCK_SKEW:
                return 400, "InvalidTimeStamp.Expired", "Specified time stamp has expired"
            canonical_query = "&".join(
                f"{quote(name, safe='~')}={quote(value, safe='~')}"
                for name, value in sorted(query.items())
            )
            canonical_headers = "".join(
                f"{name}:{(self.headers.get(name) or '').strip()}\n" for name in signed
            )
            canonical_request = "\n".join(
                [
                    self.command,
                    path or "/",
                    canonical_query,
                    canonical_headers,
                    ";".join(signed),
                    payload_hash,
                ]
            )
            string_to_sign = (
                "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
            )
            expected = hmac.new(
                ALIYUN_ACCESS_KEY_SECRET.encode(), string_to_sign.encode(), hashlib.sha256
            ).hexdigest()
            if not hmac.compare_digest(expected, match["signature"]):
                return (
                    400,
                    "SignatureDoesNotMatch",
                    "Specified signature does not match our calculation.",
                )
            return None

        def _tencent_sms(self, path: str, body: bytes) -> None:
            """Tencent Cloud SMS (2021-01-11), signed with TC3-HMAC-SHA256: the request is
            checked the way Tencent Cloud's API 3.0 checks it. Errors come back with HTTP 200
            and ``Response.Error``, as Tencent answers them."""
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
            state.requests.append(Recorded("POST", path, dict(self.headers), params))

            def error(code: str, message: str) -> None:
                self._json(
                    {
                        "Response": {
                            "Error": {"Code": code, "Message": message},
                            "RequestId": "fake-tencent-error",
                        }
                    }
                )

            refusal = self._tencent_signature_refusal(path, body)
            if refusal:
                return error(*refusal)
            if self.headers.get("X-TC-Action") != "SendSms":
                return error("InvalidAction", "The action does not exist")
            if self.headers.get("X-TC-Version") != "2021-01-11":
                return error("NoSuchVersion", "The version does not exist")
            if params.get("SmsSdkAppId") != TENCENT_SMS_SDK_APP_ID:
                return error(
                    "UnauthorizedOperation.SmsSdkAppIdVerifyFail", "SmsSdkAppId verify fail"
                )
            outcome = self._sms_answer()
            if outcome == "down":
                return self._send(503, b"Service Unavailable", "text/html")
            phones = params.get("PhoneNumberSet") or []
            statuses = []
            for phone in phones:
                if outcome == "refuse":
                    statuses.append(
                        {
                            "SerialNo": "",
                            "PhoneNumber": phone,
                            "Fee": 0,
                            "SessionContext": params.get("SessionContext", ""),
                            "Code": "LimitExceeded.PhoneNumberOneHourLimit",
                            "Message": "the number of sms messages sent from a single mobile "
                            "number within 1 hour exceeds the upper limit",
                            "IsoCode": "CN",
                        }
                    )
                    continue
                state.sms_messages.append(
                    {
                        "provider": "tencent",
                        "phone": phone,
                        "sign": params.get("SignName"),
                        "template": params.get("TemplateId"),
                        "params": params.get("TemplateParamSet") or [],
                        "out_id": params.get("SessionContext"),
                    }
                )
                statuses.append(
                    {
                        "SerialNo": f"2640:{4000000000 + len(state.sms_messages)}",
                        "PhoneNumber": phone,
                        "Fee": 1,
                        "SessionContext": params.get("SessionContext", ""),
                        "Code": "Ok",
                        "Message": "send success",
                        "IsoCode": "CN",
                    }
                )
            self._json({"Response": {"SendStatusSet": statuses, "RequestId": "fake-tencent-ok"}})

        def _tencent_signature_refusal(self, path: str, body: bytes) -> tuple[str, str] | None:
            """Why Tencent Cloud would refuse this request's signature, or None."""
            match = _TENCENT_AUTHORIZATION.fullmatch(self.headers.get("Authorization", ""))
            if not match:
                return "AuthFailure.InvalidAuthorization", "Authorization is not well-formed"
            if match["id"] != TENCENT_SECRET_ID:
                return "AuthFailure.SecretIdNotFound", "The SecretId is not found"
            try:
                timestamp = int(self.headers.get("X-TC-Timestamp", ""))
            except ValueError:
                return "AuthFailure.InvalidAuthorization", "X-TC-Timestamp is not a number"
            if abs(time.time() - timestamp) > _TENCENT_CLOCK_SKEW:
                return "AuthFailure.SignatureExpire", "Signature expired"
            date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
            if match["date"] != date or match["service"] != "sms":
                return "AuthFailure.InvalidAuthorization", "Credential scope is wrong"
            signed = match["headers"].split(";")
            if not {"content-type", "host"} <= set(signed):
                return "AuthFailure.InvalidAuthorization", "content-type and host are unsigned"
            canonical_headers = "".join(
                f"{name}:{(self.headers.get(name) or '').strip().lower()}\n" for name in signed
            )
            canonical_request = "\n".join(
                [
                    self.command,
                    path or "/",
                    "",
                    canonical_headers,
                    ";".join(signed),
                    hashlib.sha256(body).hexdigest(),
                ]
            )
            scope = f"{date}/sms/tc3_request"
            string_to_sign = "\n".join(
                [
                    "TC3-HMAC-SHA256",
                    str(timestamp),
                    scope,
                    hashlib.sha256(canonical_request.encode()).hexdigest(),
                ]
            )
            key = ("TC3" + TENCENT_SECRET_KEY).encode()
            for part in (date, "sms", "tc3_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, match["signature"]):
                return (
                    "AuthFailure.SignatureFailure",
                    "The provided credentials could not be validated",
                )
            return None

        def _wechat(self, path: str, body: bytes) -> None:
            data = dict(xmltodict.parse(body)["xml"])
            state.requests.append(Recorded("POST", path, dict(self.headers), dict(data)))
            sign = data.pop("sign", None)
            merchants = {WECHAT_MCH_ID: (WECHAT_APP_ID, WECHAT_API_KEY), **state.wechat_merchants}
            app_id, api_key = merchants.get(data.get("mch_id"), ("", ""))
            merchant = (app_id, data.get("mch_id", ""), api_key)
            if not api_key or sign != calculate_signature(data, api_key):
                answer = {"return_code": "FAIL", "return_msg": "签名错误"}
                return self._send(200, dict_to_xml(answer).encode(), "text/xml")
            if path == "/pay/unifiedorder":
                fields = {"trade_type": data["trade_type"], "prepay_id": "wx2016prepay0001"}
                if data["trade_type"] == "NATIVE":
                    fields["code_url"] = f"weixin://wxpay/bizpayurl?pr={data['out_trade_no']}"
                if data["trade_type"] == "MWEB":
                    fields["mweb_url"] = (
                        "https://wx.tenpay.test/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx2016prepay0001"
                    )
                return self._send(200, _wechat_answer(fields, merchant), "text/xml")
            if path == "/pay/orderquery":
                fields = state.wechat_orders.get(data["out_trade_no"], {"trade_state": "NOTPAY"})
                return self._send(
                    200,
                    _wechat_answer({"out_trade_no": data["out_trade_no"], **fields}, merchant),
                    "text/xml",
                )
            if path == "/pay/downloadbill":
                bill = state.wechat_bills.get(data["bill_date"])
                if bill is None:
                    answer = {"return_code": "FAIL", "return_msg": "No Bill Exist"}
                    return self._send(200, dict_to_xml(answer).encode(), "text/xml")
                return self._send(200, bill.encode(), "text/plain; charset=utf-8")
            if path == "/pay/closeorder":
                return self._send(200, _wechat_answer({}, merchant), "text/xml")
            if path == "/secapi/pay/refund":
                fields = {
                    "out_trade_no": data["out_trade_no"],
                    "out_refund_no": data["out_refund_no"],
                    "refund_id": f"50000{len(state.requests):08d}",
                    "refund_fee": data["refund_fee"],
                    "total_fee": data["total_fee"],
                }
                return self._send(200, _wechat_answer(fields, merchant), "text/xml")
            return self._send(404, b"not found", "text/plain")

    return Handler


def start() -> tuple[FakeAPIs, ThreadingHTTPServer]:
    state = FakeAPIs()
    state.reset()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server


# WeChat Pay API v3 ------------------------------------------------------------------------
#
# The fake checks each request's Authorization (WECHATPAY2-SHA256-RSA2048) with the
# merchant's public key, as WeChat Pay does, and signs its answers with the platform key:
# the platform public key for merchants in public-key mode (their requests name its id in
# Wechatpay-Serial), else the platform certificate's key. Keys are made for each test run.

WECHATPAY_V3_KEY = "qunmenTestApiV3Key0123456789abcd"  # an APIv3 key: 32 characters
WECHATPAY_V3_MCH_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WECHATPAY_V3_MCH_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
WECHATPAY_PLATFORM_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WECHATPAY_PLATFORM_KEY_ID = "PUB_KEY_ID_0119000001092026120200112233000001"
_V3_SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
_V3_CLOCK_SKEW = 5 * 60


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def platform_certificate(serial: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A WeChat Pay platform certificate with serial number ``serial``, and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


WECHATPAY_PLATFORM_CERTIFICATE = platform_certificate(0x3A1F0C5E6D7B8A9F00112233445566778899AABB)


def serial_of(certificate: x509.Certificate) -> str:
    """A certificate's serial as WeChat Pay writes it: upper-case hexadecimal."""
    return f"{certificate.serial_number:X}"


def wechatpay_v3_sign(key: rsa.RSAPrivateKey, timestamp: str, nonce: str, body: str) -> str:
    """WeChat Pay's signature of an answer or a notification (SHA256 with RSA, base64)."""
    message = f"{timestamp}\n{nonce}\n{body}\n".encode()
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def wechatpay_v3_encrypt(plain: str, associated_data: str, key: str = WECHATPAY_V3_KEY) -> dict:
    """``plain`` encrypted as WeChat Pay encrypts a notification's resource."""
    nonce = secrets.token_hex(6)  # 12 characters, WeChat Pay's nonce length
    ciphertext = AESGCM(key.encode()).encrypt(
        nonce.encode(), plain.encode(), associated_data.encode()
    )
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "nonce": nonce,
        "associated_data": associated_data,
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }


def _v3_request_refusal(handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
    """Why WeChat Pay would refuse the request's Authorization, or None."""
    scheme, _, rest = handler.headers.get("Authorization", "").partition(" ")
    fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    if scheme != _V3_SIGNATURE_TYPE or not {"mchid", "nonce_str", "signature", "timestamp",
                                            "serial_no"} <= fields.keys():  # fmt: skip
        return "Authorization is not well-formed"
    if fields["mchid"] != WECHAT_MCH_ID or fields["serial_no"] != WECHATPAY_V3_MCH_SERIAL:
        return "mchid or serial_no is not the merchant's"
    if (
        not fields["timestamp"].isdigit()
        or abs(time.time() - int(fields["timestamp"])) > _V3_CLOCK_SKEW
    ):
        return "timestamp expired"
    message = (
        (
            f"{handler.command}\n{handler.path}\n{fields['timestamp']}\n{fields['nonce_str']}\n"
        ).encode()
        + body
        + b"\n"
    )
    try:
        WECHATPAY_V3_MCH_KEY.public_key().verify(
            base64.b64decode(fields["signature"]), message, padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return "signature does not verify with the merchant's public key"
    return None


def _v3_send(handler, state: FakeAPIs, status: int, answer: dict | None) -> None:
    """Send a signed JSON answer (or none, for 204)."""
    body = json.dumps(answer, ensure_ascii=False) if answer is not None else ""
    if handler.headers.get("Wechatpay-Serial") == WECHATPAY_PLATFORM_KEY_ID:
        serial, key = WECHATPAY_PLATFORM_KEY_ID, WECHATPAY_PLATFORM_KEY
    else:
        certificate, key = state.wechat_v3_certificates[0]
        serial = serial_of(certificate)
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(body.encode())))
    handler.send_header("Wechatpay-Timestamp", timestamp)
    handler.send_header("Wechatpay-Nonce", nonce)
    handler.send_header("Wechatpay-Serial", serial)
    handler.send_header("Wechatpay-Signature-Type", _V3_SIGNATURE_TYPE)
    handler.send_header("Wechatpay-Signature", wechatpay_v3_sign(key, timestamp, nonce, body))
    handler.end_headers()
    handler.wfile.write(body.encode())


def _v3_order(state: FakeAPIs, kind: str, data: dict[str, Any]) -> dict[str, Any] | str:
    """A new order, as the query answers it; or why WeChat Pay refuses it."""
    amount = data.get("amount") or {}
    if data.get("appid") != WECHAT_APP_ID or data.get("mchid") != WECHAT_MCH_ID:
        return "appid or mchid is wrong"
    if type(amount.get("total")) is not int or amount["total"] <= 0:
        return "amount.total is not a positive whole number of fen"
    if amount.get("currency", "CNY") != "CNY" or not data.get("notify_url"):
        return "currency or notify_url is wrong"
    if kind == "jsapi" and not (data.get("payer") or {}).get("openid"):
        return "payer.openid is missing"
    if kind == "h5" and not (data.get("scene_info") or {}).get("payer_client_ip"):
        return "scene_info.payer_client_ip is missing"
    order = {
        "appid": WECHAT_APP_ID,
        "mchid": WECHAT_MCH_ID,
        "out_trade_no": data["out_trade_no"],
        "trade_type": kind.upper().replace("H5", "MWEB"),
        "trade_state": "NOTPAY",
        "trade_state_desc": "订单未支付",
        "amount": {"total": amount["total"], "currency": "CNY"},
    }
    state.wechat_v3_orders[data["out_trade_no"]] = order
    return order


def _wechat_v3(handler, state: FakeAPIs, body: bytes) -> None:
    """One request to the fake WeChat Pay API v3."""
    url = urlsplit(handler.path)
    query = dict(parse_qsl(url.query))
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    state.requests.append(Recorded(handler.command, url.path, dict(handler.headers), data or query))

    def error(status: int, code: str, message: str) -> None:
        _v3_send(handler, state, status, {"code": code, "message": message})

    refusal = _v3_request_refusal(handler, body)
    if refusal:
        return error(401, "SIGN_ERROR", refusal)
    if url.path == "/v3/billdownload/file":  # the bill itself is not signed
        bill = gzip.compress(state.wechat_v3_bills.get(query.get("token", ""), "").encode())
        return handler._send(200, bill, "application/octet-stream")
    path = url.path.removeprefix("/v3")
    if (
        handler.command == "POST"
        and path.startswith("/pay/transactions/")
        and "/" not in (kind := path.removeprefix("/pay/transactions/"))
    ):
        order = _v3_order(state, kind, data)
        if isinstance(order, str):
            return error(400, "PARAM_ERROR", order)
        out_trade_no = order["out_trade_no"]
        answer = {
            "native": {"code_url": f"weixin://wxpay/bizpayurl?pr={out_trade_no}"},
            "h5": {"h5_url": "https://wx.tenpay.test/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx2026v3prepay0001&package=2150917749"},
            "jsapi": {"prepay_id": "wx2026v3prepay0001"},
        }[kind]  # fmt: skip
        return _v3_send(handler, state, 200, answer)
    match = re.fullmatch(r"/pay/transactions/out-trade-no/([^/]+)(/close)?", path)
    if match:
        order = state.wechat_v3_orders.get(match[1])
        if match[2]:
            if data.get("mchid") != WECHAT_MCH_ID:
                return error(400, "PARAM_ERROR", "mchid is wrong")
            if order is not None and order["trade_state"] == "NOTPAY":
                order["trade_state"] = "CLOSED"
            return _v3_send(handler, state, 204, None)
        if query.get("mchid") != WECHAT_MCH_ID:
            return error(400, "PARAM_ERROR", "mchid is wrong")
        if order is None:
            return error(404, "ORDER_NOT_EXIST", "订单不存在")
        return _v3_send(handler, state, 200, order)
    if path == "/refund/domestic/refunds" and handler.command == "POST":
        amount = data.get("amount") or {}
        if not (0 < amount.get("refund", 0) <= amount.get("total", 0)) or not data.get(
            "out_refund_no"
        ):
            return error(400, "PARAM_ERROR", "amount or out_refund_no is wrong")
        return _v3_send(
            handler,
            state,
            200,
            {
                "refund_id": f"50300{len(state.requests):012d}",
                "out_refund_no": data["out_refund_no"],
                "transaction_id": data.get("transaction_id"),
                "out_trade_no": data.get("out_trade_no"),
                "status": state.wechat_v3_refund_status,
                "amount": {
                    **amount,
                    "payer_total": amount["total"],
                    "payer_refund": amount["refund"],
                },
            },
        )
    if path == "/bill/tradebill":
        bill = state.wechat_v3_bills.get(query.get("bill_date", ""))
        if bill is None:
            return error(400, "NO_STATEMENT_EXIST", "要查询的账单不存在")
        return _v3_send(
            handler,
            state,
            200,
            {
                "hash_type": "SHA1",
                "hash_value": hashlib.sha1(bill.encode()).hexdigest(),  # noqa: S324
                "download_url": f"{state.base_url}/v3/billdownload/file?token={query['bill_date']}",
            },
        )
    if path == "/certificates":
        data = []
        for certificate, _key in state.wechat_v3_certificates:
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
            data.append(
                {
                    "serial_no": serial_of(certificate),
                    "effective_time": certificate.not_valid_before_utc.isoformat(),
                    "expire_time": certificate.not_valid_after_utc.isoformat(),
                    "encrypt_certificate": wechatpay_v3_encrypt(pem, "certificate"),
                }
            )
        return _v3_send(handler, state, 200, {"data": data})
    return error(404, "NOT_FOUND", "no such API")


def wechatpay_v3_settings(api_base: str) -> dict[str, str]:
    """The settings of a merchant with v3 credentials in public-key mode, on the fake."""
    return {
        "WECHATPAY_V3_KEY": WECHATPAY_V3_KEY,
        "WECHATPAY_MCH_PRIVATE_KEY": private_pem(WECHATPAY_V3_MCH_KEY),
        "WECHATPAY_MCH_CERT_SERIAL": WECHATPAY_V3_MCH_SERIAL,
        "WECHATPAY_PLATFORM_PUBLIC_KEY": public_pem(WECHATPAY_PLATFORM_KEY),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_ID": WECHATPAY_PLATFORM_KEY_ID,
        "WECHATPAY_V3_API_BASE": api_base,
    }


# --- WeCom (企业微信) customer groups ---------------------------------------------------
# A stand-in for WeCom's API under ``<base_url>/wecom/cgi-bin/`` (token, customer-group
# list and detail, 「加入群聊」 join ways) that keeps groups and their members, and the
# sender of WeCom's change callbacks, signed with the token and AES-encrypted with the
# EncodingAESKey by wechatpy's own WeCom crypto.

WECOM_CORP_ID = "ww0a1b2c3d4e5f6a7b"
WECOM_SECRET = "test-wecom-customer-contact-secret"
WECOM_CALLBACK_TOKEN = "wecomCallbackToken"
#: 43 characters of base64: 32 bytes of AES key, as WeCom gives it.
WECOM_ENCODING_AES_KEY = "q1u2n3m4e5n6W7e8C9o0m1T2e3s4t5K6e7y8A9b0c1d"
WECOM_ACCESS_TOKEN = "fake-wecom-access-token"
WECOM_OWNER = "zhangsan"


@dataclass
class FakeWeCom:
    """What the fake WeCom knows: customer groups (by chat id, each with ``member_list``
    as ``groupchat/get`` answers it) and join ways (by config id)."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    join_ways: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Most members a group takes before a join way moves on to the next one.
    group_size: int = 500
    #: When set, every call but the token's fails with this errcode; with ``failing``,
    #: only the calls to those paths (``externalcontact/groupchat/get_join_way`` …).
    error: int | None = None
    failing: set[str] = field(default_factory=set)
    made: int = 0

    def reset(self) -> None:
        self.groups.clear()
        self.join_ways.clear()
        self.failing.clear()
        self.group_size, self.error, self.made = 500, None, 0

    def add_group(self, chat_id: str, name: str, owner: str = WECOM_OWNER) -> None:
        self.groups[chat_id] = {
            "chat_id": chat_id,
            "name": name,
            "owner": owner,
            "create_time": int(time.time()),
            "notice": "",
            "member_list": [
                {"userid": owner, "type": 1, "join_time": int(time.time()), "join_scene": 1}
            ],
            "admin_list": [],
        }

    def join(
        self, state: str, user_id: str, name: str, nickname: str = "", *, at: int | None = None
    ) -> str:
        """Someone scans the join way whose state is ``state`` (at ``at``, a Unix time;
        now by default): they land in the first of its groups with room, or in a group
        WeCom opens for it. Returns the chat id."""
        way = next(w for w in self.join_ways.values() if w["state"] == state)
        chat_id = next(
            (
                c
                for c in way["chat_id_list"]
                if len(self.groups[c]["member_list"]) < self.group_size
            ),
            None,
        )
        if chat_id is None:
            assert way["auto_create_room"], "every group is full"
            chat_id = f"wrAutoRoom{way['room_base_id']:04d}"
            self.add_group(chat_id, f"{way['room_base_name']}{way['room_base_id']}")
            way["room_base_id"] += 1
            way["chat_id_list"] = [*way["chat_id_list"][-4:], chat_id]
        self.add_member(chat_id, user_id, name, nickname, state=state, scene=3, at=at)
        return chat_id

    def add_member(
        self,
        chat_id: str,
        user_id: str,
        name: str,
        nickname: str = "",
        *,
        state: str | None = None,
        scene: int = 1,
        at: int | None = None,
    ) -> None:
        """``user_id`` (an external user) is in ``chat_id`` now: by a join way's QR
        (``state``) or invited by the owner."""
        member = {
            "userid": user_id,
            "type": 2,
            "join_time": at or int(time.time()),
            "join_scene": scene,
            "invitor": {"userid": self.groups[chat_id]["owner"]},
            "group_nickname": nickname,
            "name": name,
            "unionid": f"union-{user_id}",
        }
        if state:
            member["state"] = state
        self.groups[chat_id]["member_list"].append(member)

    def leave(self, chat_id: str, user_id: str) -> None:
        members = self.groups[chat_id]["member_list"]
        members[:] = [m for m in members if m["userid"] != user_id]

    def answer(self, path: str, data: dict[str, Any]) -> dict[str, Any]:
        """What WeCom answers a call to ``path`` (below ``cgi-bin/``) with ``data``."""
        if self.error is not None and (not self.failing or path in self.failing):
            return {"errcode": self.error, "errmsg": "fake WeCom error"}
        if path == "externalcontact/groupchat/list":
            chats = [{"chat_id": c, "status": 0} for c in self.groups]
            start, size = int(data.get("cursor") or 0), int(data.get("limit") or 100)
            page = chats[start : start + size]
            cursor = str(start + size) if start + size < len(chats) else ""
            return {"errcode": 0, "errmsg": "ok", "group_chat_list": page, "next_cursor": cursor}
        if path == "externalcontact/groupchat/get":
            group = self.groups.get(data.get("chat_id"))
            if group is None:
                return {"errcode": 40050, "errmsg": "chatid not found"}
            members = [
                {k: v for k, v in m.items() if k != "name" or data.get("need_name")}
                for m in group["member_list"]
            ]
            return {"errcode": 0, "errmsg": "ok", "group_chat": {**group, "member_list": members}}
        if path == "externalcontact/groupchat/add_join_way":
            chats = data.get("chat_id_list") or []
            valid = (
                data.get("scene") in (1, 2)
                and 1 <= len(chats) <= 5
                and all(c in self.groups for c in chats)
                and len(data.get("state") or "") <= 30
                and (
                    not data.get("auto_create_room")
                    or (data.get("room_base_name") and data.get("room_base_id"))
                )
            )
            if not valid:
                return {"errcode": 40058, "errmsg": "invalid join way"}
            self.made += 1
            config_id = f"cfg{self.made:08d}"
            self.join_ways[config_id] = {"config_id": config_id, **data}
            return {"errcode": 0, "errmsg": "ok", "config_id": config_id}
        if path in (
            "externalcontact/groupchat/get_join_way",
            "externalcontact/groupchat/del_join_way",
        ):
            config_id = data.get("config_id")
            if config_id not in self.join_ways:
                return {"errcode": 40058, "errmsg": "invalid config_id"}
            if path.endswith("del_join_way"):
                del self.join_ways[config_id]
                return {"errcode": 0, "errmsg": "ok"}
            way = self.join_ways[config_id]
            qr = f"https://wework.qpic.cn/wwpic/fake/{config_id}"
            return {"errcode": 0, "errmsg": "ok", "join_way": {**way, "qr_code": qr}}
        return {"errcode": 404, "errmsg": "no such API"}


def wecom_callback(
    event: dict[str, Any],
    *,
    token: str = WECOM_CALLBACK_TOKEN,
    aes_key: str = WECOM_ENCODING_AES_KEY,
    corp_id: str = WECOM_CORP_ID,
) -> tuple[bytes, dict[str, str]]:
    """A WeCom callback as WeCom sends it: the event's XML encrypted with ``aes_key`` and
    signed with ``token`` (wechatpy's own WeCom crypto); the body and the query string."""
    inner = xmltodict.unparse({"xml": event}, full_document=False)
    nonce = f"{secrets.randbelow(10**10):010d}"
    signed = xmltodict.parse(WeComCrypto(token, aes_key, corp_id).encrypt_message(inner, nonce))[
        "xml"
    ]
    body = xmltodict.unparse(
        {"xml": {"ToUserName": corp_id, "Encrypt": signed["Encrypt"], "AgentID": "1000002"}},
        full_document=False,
    ).encode()
    query = {
        "msg_signature": signed["MsgSignature"],
        "timestamp": signed["TimeStamp"],
        "nonce": nonce,
    }
    return body, query


def group_change(chat_id: str, detail: str = "add_member", **fields: Any) -> dict[str, Any]:
    """A 客户群变更 (``change_external_chat``) event for ``chat_id``."""
    return {
        "ToUserName": WECOM_CORP_ID,
        "FromUserName": "sys",
        "CreateTime": str(int(time.time())),
        "MsgType": "event",
        "Event": "change_external_chat",
        "ChatId": chat_id,
        "ChangeType": "update",
        "UpdateDetail": detail,
        "JoinScene": "3",
        "MemChangeCnt": "1",
        **fields,
    }


def _wecom_answer(
    state: FakeAPIs, path: str, query: dict[str, str], data: dict[str, Any]
) -> dict[str, Any]:
    """The fake WeCom's answer to a request for ``/wecom/cgi-bin/<path>``: the token for
    the right corp id and secret; anything else only with that token."""
    path = path.removeprefix("/wecom/cgi-bin/")
    if path == "gettoken":
        if (query.get("corpid"), query.get("corpsecret")) != (WECOM_CORP_ID, WECOM_SECRET):
            return {"errcode": 40001, "errmsg": "invalid credential"}
        return {
            "errcode": 0,
            "errmsg": "ok",
            "access_token": WECOM_ACCESS_TOKEN,
            "expires_in": 7200,
        }
    if query.get("access_token") != WECOM_ACCESS_TOKEN:
        return {"errcode": 40014, "errmsg": "invalid access_token"}
    return state.wecom.answer(path, data)
