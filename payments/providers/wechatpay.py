"""WeChat Pay (API v2) through wechatpy: JSAPI inside WeChat, H5 (MWEB) in other phone
browsers, Native (a QR code) on desktops; refunds with the merchant certificate.

Notifications are XML. A body with a DOCTYPE, an entity declaration or any other ``<!``
markup but CDATA is refused before it is parsed, never expanded (the 2018 WeChat Pay SDK
XXE incident); so is one deeper or larger than a flat notification, found by a scan that
stops at the first element over the bounds (a deeply nested megabyte cost 1.8 s of CPU
in xmltodict). Signatures are computed by wechatpy's own functions and compared in
constant time. wechatpy logs the string it signs, API key included, at DEBUG: its loggers
are held at INFO whatever the app's logging says.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import quote
from xml.parsers import expat
from xml.parsers.expat import ExpatError
from zoneinfo import ZoneInfo

import xmltodict
from flask import Response, url_for
from flask_babel import lazy_gettext as _l
from wechatpy.crypto import RefundCrypto, WeChatRefundCrypto
from wechatpy.exceptions import WeChatClientException, WeChatOAuthException, WeChatPayException
from wechatpy.oauth import WeChatOAuth
from wechatpy.pay import WeChatPay
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac

from core.money import Money
from core.security import same_secret
from payments.models import Payment, Refund
from payments.providers import (
    EventKind,
    InvalidNotification,
    Notification,
    Payer,
    PaymentProvider,
    PaymentStart,
    ProviderError,
    RefundResult,
    notify_url,
)

TIMEOUT_SECONDS = 10
#: Any markup declaration but CDATA: DOCTYPE, ENTITY, comments.
_DECLARATION = re.compile(rb"<!(?!\[CDATA\[)")
#: A notification is one flat element of a few dozen fields (``<xml><appid>…``; a refund's
#: decrypted ``<root>`` alike): anything deeper or larger is refused before it is parsed.
MAX_XML_DEPTH = 3
MAX_XML_ELEMENTS = 100
#: WeChat Pay reads times in China Standard Time.
_CHINA = ZoneInfo("Asia/Shanghai")

# wechatpy writes its signing string (which contains the API key) at DEBUG.
logging.getLogger("wechatpy").setLevel(logging.INFO)


def _check_shape(body: bytes) -> None:
    """Refuse a document deeper than :data:`MAX_XML_DEPTH` or with more than
    :data:`MAX_XML_ELEMENTS` elements. Expat stops at the first element over either bound,
    so a hostile document costs no more to refuse than a genuine one costs to read."""
    depth = elements = 0

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal depth, elements
        depth, elements = depth + 1, elements + 1
        if depth > MAX_XML_DEPTH:
            raise InvalidNotification(f"XML nested deeper than {MAX_XML_DEPTH}")
        if elements > MAX_XML_ELEMENTS:
            raise InvalidNotification(f"XML of more than {MAX_XML_ELEMENTS} elements")

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1

    parser = expat.ParserCreate()
    parser.StartElementHandler, parser.EndElementHandler = start, end
    try:
        parser.Parse(body, True)
    except ExpatError as error:
        raise InvalidNotification(f"not XML: {error}") from error


def parse_xml(body: bytes, root: str) -> dict[str, str]:
    """A flat WeChat Pay XML document as a dict of strings, refusing declarations and
    documents deeper or larger than a flat notification."""
    if not body.strip():
        raise InvalidNotification("empty body")
    if _DECLARATION.search(body):
        raise InvalidNotification("XML with a DOCTYPE, entity or comment is refused")
    _check_shape(body)
    try:
        document = xmltodict.parse(body, disable_entities=True)
    except (ExpatError, ValueError) as error:
        raise InvalidNotification(f"not XML: {error}") from error
    data = document.get(root) if isinstance(document, dict) else None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidNotification(f"not a flat <{root}> document")
    return data


def _fee(data: Mapping[str, str], key: str, currency: str = "CNY") -> Money:
    value = data.get(key, "")
    if not (value.isascii() and value.isdigit()):
        raise InvalidNotification(f"{key} is not a whole number of fen: {value!r}")
    return Money(int(value), data.get("fee_type", currency))


class _OAuth(WeChatOAuth):
    """wechatpy's OAuth client, with a timeout on its calls."""

    def _request(self, method, url_or_endpoint, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT_SECONDS)
        return super()._request(method, url_or_endpoint, **kwargs)


class WeChatPayBase(PaymentProvider):
    """What both versions of WeChat Pay's API share: one name for the payer, the choice of
    method, and the official account's OAuth that gives a JSAPI payer's openid."""

    name = "wechatpay"
    label = _l("WeChat Pay")

    def __init__(
        self, *, app_id: str, mch_id: str, app_secret: str | None, oauth_api_base: str | None
    ) -> None:
        self.app_id, self.mch_id = app_id, mch_id
        self._app_secret = app_secret
        self._oauth_api_base = oauth_api_base

    @staticmethod
    def unpaid_answer(payment: Payment, state: str, reason: str | None) -> Notification | None:
        """What an order query's ``trade_state`` other than paid says: the attempt ended
        (closed, revoked, failed), or None while it may still be paid. Both versions
        name the states alike."""
        if state not in ("CLOSED", "REVOKED", "PAYERROR"):
            return None
        return Notification(
            event_id=f"query:{payment.public_id}:{state}",
            kind=EventKind.PAYMENT_FAILED if state == "PAYERROR" else EventKind.PAYMENT_EXPIRED,
            payment_public_id=payment.public_id,
            reason=reason or state,
        )

    def method_for(self, payer: Payer) -> str:
        """JSAPI inside WeChat (needs OAuth, so the app secret); H5 in other phone
        browsers; a QR code to scan on a desktop."""
        if payer.in_wechat and self.can_oauth:
            return "jsapi"
        return "mweb" if payer.on_phone else "native"

    @property
    def can_oauth(self) -> bool:
        """Whether the official account's secret is set (OAuth needs it)."""
        return bool(self._app_secret)

    def oauth(self, redirect_uri: str, state: str) -> WeChatOAuth:
        """wechatpy's OAuth client for the payer's openid (``snsapi_base``: no prompt)."""
        if not self._app_secret:
            raise ProviderError("WECHATPAY_APP_SECRET is not set: no JSAPI payments")
        client = _OAuth(self.app_id, self._app_secret, redirect_uri, state=state)
        if self._oauth_api_base:
            client.API_BASE_URL = self._oauth_api_base.rstrip("/") + "/"
        return client

    def openid_from_code(self, redirect_uri: str, code: str) -> str:
        try:
            return self.oauth(redirect_uri, "").fetch_access_token(code)["openid"]
        except (WeChatOAuthException, WeChatClientException, KeyError) as error:
            raise ProviderError(f"WeChat OAuth: {error}") from error

    def _check_start(self, payment: Payment, payer: Payer) -> str:
        """The method ``payer`` pays ``payment`` with; raises :class:`ProviderError` when
        WeChat Pay cannot take it."""
        if payment.currency != "CNY":
            raise ProviderError("WeChat Pay takes CNY only")
        method = self.method_for(payer)
        if method == "jsapi" and not payer.wechat_openid:
            raise ProviderError("JSAPI payment without the payer's openid")
        return method

    @staticmethod
    def _description(payment: Payment) -> str:
        """The order's description as WeChat Pay takes it: at most 127 bytes."""
        return payment.order.description.encode()[:127].decode(errors="ignore")

    def _started(self, payment: Payment, method: str, payer: Payer, answer: dict) -> PaymentStart:
        """Where the payer goes next: our page with the QR code (``answer["code_url"]``) or
        the JSAPI call (``answer["jsapi"]``), or WeChat's H5 cashier (``answer["h5_url"]``),
        which sends them back to the payment's return URL."""
        own_page = url_for("wechatpay.pay", payment_public_id=payment.public_id)
        if method == "native":
            return PaymentStart(own_page, method, {"code_url": answer["code_url"]})
        if method == "jsapi":
            # The openid is WeChat's verified word on who pays: membership links it.
            data = {"jsapi": answer["jsapi"], "openid": payer.wechat_openid}
            return PaymentStart(own_page, method, data)
        return PaymentStart(
            f"{answer['h5_url']}&redirect_url={quote(payment.return_url, safe='')}", method
        )


class WeChatPayProvider(WeChatPayBase):
    """WeChat Pay's API v2 (XML, MD5/HMAC signatures with the API key)."""

    def __init__(
        self,
        *,
        app_id: str,
        mch_id: str,
        api_key: str,
        app_secret: str | None = None,
        mch_cert: str | None = None,
        mch_key: str | None = None,
        api_base: str | None = None,
        oauth_api_base: str | None = None,
    ) -> None:
        super().__init__(
            app_id=app_id, mch_id=mch_id, app_secret=app_secret, oauth_api_base=oauth_api_base
        )
        self._api_key = api_key
        self._client = WeChatPay(
            app_id, api_key, mch_id, mch_cert=mch_cert, mch_key=mch_key, timeout=TIMEOUT_SECONDS
        )
        if api_base:
            self._client.API_BASE_URL = api_base.rstrip("/") + "/"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WeChatPayProvider | None:
        required = ("WECHATPAY_APP_ID", "WECHATPAY_MCH_ID", "WECHATPAY_API_KEY")
        if not all(config.get(key) for key in required):
            return None
        return cls(
            app_id=config["WECHATPAY_APP_ID"],
            mch_id=config["WECHATPAY_MCH_ID"],
            api_key=config["WECHATPAY_API_KEY"],
            app_secret=config.get("WECHATPAY_APP_SECRET"),
            mch_cert=config.get("WECHATPAY_MCH_CERT"),
            mch_key=config.get("WECHATPAY_MCH_KEY"),
            api_base=config.get("WECHATPAY_API_BASE"),
            oauth_api_base=config.get("WECHAT_API_BASE"),
        )

    # Starting a payment --------------------------------------------------------------

    def start_payment(self, payment: Payment, payer: Payer) -> PaymentStart:
        method = self._check_start(payment, payer)
        order = payment.order
        extra: dict[str, Any] = {}
        if method == "native":
            extra["product_id"] = payment.public_id
        if method == "mweb":
            extra["scene_info"] = {"h5_info": {"type": "Wap", "wap_name": "Qunmen"}}
        result = self._call(
            self._client.order.create,
            trade_type=method.upper(),
            body=self._description(payment),
            total_fee=payment.amount,
            fee_type=payment.currency,
            notify_url=notify_url(self.name, order.community_id),
            client_ip=payer.client_ip,
            user_id=payer.wechat_openid if method == "jsapi" else None,
            out_trade_no=payment.public_id,
            time_expire=order.expires_at.astimezone(_CHINA),
            **extra,
        )
        if method == "native":
            answer = {"code_url": result["code_url"]}
        elif method == "mweb":
            answer = {"h5_url": result["mweb_url"]}
        else:
            answer = {"jsapi": self._client.jsapi.get_jsapi_params(result["prepay_id"])}
        return self._started(payment, method, payer, answer)

    def _request(self, function, **kwargs):
        """Call a wechatpy API; its failures become :class:`ProviderError`."""
        try:
            return function(**kwargs)
        except (WeChatPayException, WeChatClientException) as error:
            raise ProviderError(f"WeChat Pay: {error}") from error
        except OSError as error:  # requests' connection errors, a missing certificate
            raise ProviderError(f"WeChat Pay unreachable: {error}") from error

    def _call(self, function, **kwargs) -> dict[str, str]:
        """Call a wechatpy API and check the answer's signature."""
        result = self._request(function, **kwargs)
        if not isinstance(result, dict) or not self._signed(dict(result)):
            raise ProviderError("WeChat Pay: an answer that is not signed by WeChat Pay")
        return result

    def _signed(self, data: dict[str, str]) -> bool:
        """Whether ``data`` carries a valid signature (popped from it)."""
        signature = data.pop("sign", None)
        if not isinstance(signature, str):
            return False
        if data.get("sign_type") == "HMAC-SHA256":
            expected = calculate_signature_hmac(data, self._api_key)
        else:
            expected = calculate_signature(data, self._api_key)
        return same_secret(expected, signature)

    # Notifications -------------------------------------------------------------------

    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        data = parse_xml(body, "xml")
        if data.get("return_code") != "SUCCESS":
            raise InvalidNotification(f"return_code {data.get('return_code')!r}")
        if not (same_secret(data.get("appid", ""), self.app_id)):
            raise InvalidNotification("appid is not ours")
        if not (same_secret(data.get("mch_id", ""), self.mch_id)):
            raise InvalidNotification("mch_id is not ours")
        if "req_info" in data:
            return self._refund_notification(data["req_info"])
        if not self._signed(data):
            raise InvalidNotification("signature does not match")
        return self._payment_notification(data)

    def _payment_notification(self, data: dict[str, str]) -> Notification:
        out_trade_no = data.get("out_trade_no")
        if not out_trade_no:
            raise InvalidNotification("no out_trade_no")
        if data.get("result_code") == "SUCCESS":
            transaction_id = data.get("transaction_id")
            if not transaction_id:
                raise InvalidNotification("no transaction_id")
            return Notification(
                event_id=f"pay:{transaction_id}",
                kind=EventKind.PAYMENT_SUCCEEDED,
                payment_public_id=out_trade_no,
                payment_external_id=transaction_id,
                amount=self._money(data, "total_fee"),
            )
        return Notification(
            event_id=f"payfail:{out_trade_no}:{data.get('err_code', '')}",
            kind=EventKind.PAYMENT_FAILED,
            payment_public_id=out_trade_no,
            reason=data.get("err_code_des") or data.get("err_code"),
        )

    def _refund_notification(self, req_info: str) -> Notification:
        """A refund result: ``req_info`` is AES-encrypted with the API key's MD5; a forger
        without the key cannot produce a readable one."""
        key = WeChatRefundCrypto(self._api_key).key
        try:
            plain = RefundCrypto(key).decrypt(req_info)
        except (ValueError, TypeError, IndexError) as error:
            raise InvalidNotification(f"req_info does not decrypt: {error}") from error
        info = parse_xml(plain, "root")
        refund_id, status = info.get("refund_id"), info.get("refund_status")
        if not refund_id or not info.get("out_trade_no") or not info.get("out_refund_no"):
            raise InvalidNotification("refund result without its ids")
        return Notification(
            event_id=f"refund:{refund_id}:{status}",
            kind=EventKind.REFUND_SUCCEEDED if status == "SUCCESS" else EventKind.REFUND_FAILED,
            payment_public_id=info["out_trade_no"],
            payment_external_id=info.get("transaction_id"),
            amount=self._money(info, "refund_fee"),
            payment_amount=self._money(info, "total_fee"),
            refund_public_id=info["out_refund_no"],
            refund_external_id=refund_id,
            reason=status,
        )

    def _money(self, data: Mapping[str, str], key: str) -> Money:
        try:
            return _fee(data, key)
        except ValueError as error:  # an unknown fee_type
            raise InvalidNotification(str(error)) from error

    def acknowledge(self, accepted: bool, message: str, status: int) -> Response:
        """The XML answer WeChat Pay expects: SUCCESS stops its retries, FAIL asks for
        another delivery."""
        code = "SUCCESS" if accepted else "FAIL"
        text = "OK" if accepted else message.replace("]]>", "")[:120]
        body = (
            f"<xml><return_code><![CDATA[{code}]]></return_code>"
            f"<return_msg><![CDATA[{text}]]></return_msg></xml>"
        )
        return Response(body, status=status, mimetype="text/xml")

    # Refunds, queries ----------------------------------------------------------------

    def request_refund(self, refund: Refund, transaction_id: str | None) -> RefundResult:
        if not (self._client.mch_cert and self._client.mch_key):
            raise ProviderError("WECHATPAY_MCH_CERT and WECHATPAY_MCH_KEY are needed for refunds")
        payment = refund.payment
        result = self._call(
            self._client.refund.apply,
            total_fee=payment.amount,
            refund_fee=refund.amount,
            out_refund_no=refund.public_id,
            out_trade_no=payment.public_id,
            fee_type=payment.currency,
            refund_desc=refund.reason[:80] or None,
            notify_url=notify_url(self.name, payment.order.community_id),
        )
        # WeChat Pay accepted the request; its notification says when the money is back.
        return RefundResult(external_id=result.get("refund_id"), succeeded=None)

    def query_payment(self, payment: Payment, *, now: datetime) -> Notification | None:
        result = self._call(self._client.order.query, out_trade_no=payment.public_id)
        state = result.get("trade_state")
        if state == "SUCCESS":
            return Notification(
                event_id=f"pay:{result['transaction_id']}",
                kind=EventKind.PAYMENT_SUCCEEDED,
                payment_public_id=payment.public_id,
                payment_external_id=result["transaction_id"],
                amount=self._money(result, "total_fee"),
            )
        return self.unpaid_answer(payment, state, result.get("trade_state_desc"))

    def download_bill(self, day: date) -> str:
        """The day's bill of every payment and refund (``bill_type=ALL``): the text
        :func:`payments.reconciliation.read_wechat_bill` reads. Bills are not signed."""
        result = self._request(self._client.tools.download_bill, bill_date=day, bill_type="ALL")
        if not isinstance(result, str):
            raise ProviderError("WeChat Pay: the answer is not a bill")
        return result

    def close_payment(self, payment: Payment) -> None:
        self._call(self._client.order.close, out_trade_no=payment.public_id)
