"""WeChat Pay API v3 through wechatpayv3: the same three ways to pay as v2 (JSAPI inside
WeChat, H5 in other phone browsers, Native on desktops), refunds, order query and close,
and the daily trade bill. Requests are signed with the merchant's RSA key and every
answer's signature is checked with WeChat Pay's platform key, by the library.

Which key checks WeChat Pay's signatures: the platform public key and its id when they
are configured (public-key mode, what merchants onboarded since 2024 are given), else the
platform certificates, which the library fetches (decrypting them with the APIv3 key)
and caches in a folder of the instance.

Notifications are JSON signed in the ``Wechatpay-*`` headers, their ``resource``
encrypted with AEAD_AES_256_GCM under the APIv3 key. They are verified and decrypted with
the library's own functions (``rsa_verify``, ``aes_decrypt``), not its ``callback()``
helper, because that helper enforces none of our rules: it takes any timestamp, and for a
``Wechatpay-Serial`` it does not know it downloads the certificates again, so a forger
could make us call WeChat Pay with every request; and it answers the same None for a
forgery and for a wrong APIv3 key, which admins must tell apart. So, before the
signature is checked: a timestamp more than five minutes from the delivery's arrival,
either way, is refused; so is a ``WECHATPAY/SIGNTEST/`` probe and a serial that names no
key we hold (the certificates are fetched again for an unknown serial at most every
:data:`CERTIFICATE_REFRESH_SECONDS`).

A merchant with both v2 and v3 credentials may still receive v2 notifications for
payments started before the switch: a delivery without ``Wechatpay-Signature`` (v2's XML)
goes to a v2 provider built from the v2 settings, and gets v2's XML answer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import threading
import time
import zlib
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Response, jsonify, request
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.core import Core
from wechatpayv3.utils import aes_decrypt, rsa_verify

from config import SettingError
from core.clock import utcnow
from core.money import Money
from core.security import same_secret
from payments.models import Payment, Refund
from payments.providers import (
    EventKind,
    InvalidNotification,
    Notification,
    Payer,
    PaymentStart,
    ProviderError,
    RefundResult,
    notify_url,
)
from payments.providers.wechatpay import (
    _CHINA,
    TIMEOUT_SECONDS,
    WeChatPayBase,
    WeChatPayProvider,
)

#: WeChat Pay's API when ``WECHATPAY_V3_API_BASE`` is unset.
API_BASE = "https://api.mch.weixin.qq.com"
#: How far a notification's ``Wechatpay-Timestamp`` may be from its arrival, either way.
MAX_CLOCK_SKEW = timedelta(minutes=5)
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
#: WeChat Pay's signature probes: refused like any forgery.
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
#: The platform certificates are fetched again for an unknown serial at most this often.
CERTIFICATE_REFRESH_SECONDS = 300
#: The settings that switch v3 on; each one needs the others.
V3_SETTINGS = ("WECHATPAY_V3_KEY", "WECHATPAY_MCH_PRIVATE_KEY", "WECHATPAY_MCH_CERT_SERIAL")


class _Core(Core):
    """wechatpayv3's core on the API base we are given. The library has no setting for it
    and, in certificate mode, fetches the certificates while it is built: the base is set
    before that, and again once built (public-key mode fetches nothing)."""

    def __init__(self, *, api_base: str, **kwargs: Any) -> None:
        self._api_base = api_base
        super().__init__(**kwargs)
        self._gate_way = api_base

    def _init_certificates(self) -> None:
        self._gate_way = self._api_base
        super()._init_certificates()


class _Client(WeChatPay):
    """wechatpayv3's client with :class:`_Core`; what ``WeChatPay.__init__`` sets, for a
    direct merchant (not a service provider)."""

    def __init__(self, *, appid: str, mchid: str, api_base: str, **core: Any) -> None:
        self._type = WeChatPayType.NATIVE
        self._mchid, self._appid = mchid, appid
        self._notify_url = None
        self._partner_mode = False
        self._core = _Core(api_base=api_base, mchid=mchid, **core)


def _pem(config: Mapping[str, Any], name: str) -> str:
    """The PEM setting ``name``: the PEM text itself, or the path of a file holding it."""
    value = str(config[name]).strip()
    if value.startswith("-----BEGIN"):
        return value
    try:
        return Path(value).read_text()
    except OSError as error:
        raise SettingError(f"{name}: neither PEM text nor a readable file ({error})") from None


def _fen(amount: Mapping[str, Any], key: str) -> int:
    value = amount.get(key)
    if type(value) is not int or value < 0:
        raise InvalidNotification(f"amount.{key} is not a whole number of fen: {value!r}")
    return value


def _money(amount: Any, key: str) -> Money:
    """``amount[key]`` with the amount's currency (v3 refunds state none: CNY)."""
    if not isinstance(amount, dict):
        raise InvalidNotification("no amount")
    try:
        return Money(_fen(amount, key), str(amount.get("currency") or "CNY"))
    except ValueError as error:  # an unknown currency
        raise InvalidNotification(str(error)) from error


class WeChatPayV3Provider(WeChatPayBase):
    """WeChat Pay's API v3, with the v2 provider for notifications of payments started
    under v2 (None when no v2 key is configured)."""

    def __init__(
        self,
        *,
        app_id: str,
        mch_id: str,
        api_v3_key: str,
        private_key: str,
        cert_serial: str,
        platform_public_key: str | None = None,
        platform_public_key_id: str | None = None,
        cert_dir: str | None = None,
        app_secret: str | None = None,
        api_base: str | None = None,
        oauth_api_base: str | None = None,
        v2: WeChatPayProvider | None = None,
    ) -> None:
        super().__init__(
            app_id=app_id, mch_id=mch_id, app_secret=app_secret, oauth_api_base=oauth_api_base
        )
        self._api_v3_key = api_v3_key
        self._api_base = (api_base or API_BASE).rstrip("/")
        self._v2 = v2
        self._public_key_id = platform_public_key_id
        self._certificates_lock = threading.Lock()
        #: When an unknown serial last fetched the certificates (never, yet).
        self._certificates_fetched = float("-inf")
        try:
            # No logger: the library would log each request and decrypted notification.
            self._client = _Client(
                appid=app_id,
                mchid=mch_id,
                api_base=self._api_base,
                cert_serial_no=cert_serial,
                private_key=private_key,
                apiv3_key=api_v3_key,
                cert_dir=cert_dir,
                timeout=TIMEOUT_SECONDS,
                public_key=platform_public_key,
                public_key_id=platform_public_key_id,
            )
        except Exception as error:  # wechatpayv3 raises bare Exception: a bad key, no certificate
            raise SettingError(f"WeChat Pay API v3: {error}") from error

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WeChatPayBase | None:
        """The one place the API version is chosen: v3 when its credentials are set (it
        wins over v2, as WeChat Pay recommends it), keeping a v2 provider for v2's
        notifications when the v2 key is set too; v2 alone otherwise; None when neither
        is configured. Raises :class:`~config.SettingError` for half a v3 configuration."""
        v2 = WeChatPayProvider.from_config(config)
        if not any(config.get(name) for name in V3_SETTINGS):
            return v2
        for name in ("WECHATPAY_APP_ID", "WECHATPAY_MCH_ID", *V3_SETTINGS):
            if not config.get(name):
                raise SettingError(f"{name} is not set: WeChat Pay API v3 needs it")
        if len(str(config["WECHATPAY_V3_KEY"]).encode()) != 32:
            raise SettingError("WECHATPAY_V3_KEY is not an APIv3 key: it has 32 characters")
        public_key_id = config.get("WECHATPAY_PLATFORM_PUBLIC_KEY_ID") or None
        if bool(config.get("WECHATPAY_PLATFORM_PUBLIC_KEY")) != bool(public_key_id):
            raise SettingError(
                "WECHATPAY_PLATFORM_PUBLIC_KEY and WECHATPAY_PLATFORM_PUBLIC_KEY_ID go together"
            )
        return cls(
            app_id=config["WECHATPAY_APP_ID"],
            mch_id=config["WECHATPAY_MCH_ID"],
            api_v3_key=config["WECHATPAY_V3_KEY"],
            private_key=_pem(config, "WECHATPAY_MCH_PRIVATE_KEY"),
            cert_serial=config["WECHATPAY_MCH_CERT_SERIAL"],
            platform_public_key=(
                _pem(config, "WECHATPAY_PLATFORM_PUBLIC_KEY") if public_key_id else None
            ),
            platform_public_key_id=public_key_id,
            cert_dir=None if public_key_id else config.get("WECHATPAY_PLATFORM_CERT_DIR"),
            app_secret=config.get("WECHATPAY_APP_SECRET"),
            api_base=config.get("WECHATPAY_V3_API_BASE"),
            oauth_api_base=config.get("WECHAT_API_BASE"),
            v2=v2,
        )

    # Calling the API -----------------------------------------------------------------

    def _request(self, function, **kwargs) -> tuple[int, Any]:
        """Call a wechatpayv3 API: its status and its answer (a dict for JSON, bytes for a
        file). The library checks a 2xx answer's signature; failures to call become
        :class:`ProviderError`."""
        try:
            status, answer = function(**kwargs)
        except OSError as error:  # requests' connection errors
            raise ProviderError(f"WeChat Pay unreachable: {error}") from error
        except Exception as error:  # wechatpayv3 raises bare Exception (a bad signature …)
            raise ProviderError(f"WeChat Pay: {error}") from error
        if isinstance(answer, str):
            try:
                answer = json.loads(answer) if answer else {}
            except ValueError:
                raise ProviderError(f"WeChat Pay: an answer that is not JSON ({status})") from None
        return status, answer

    def _call(self, function, **kwargs) -> Any:
        """:meth:`_request`'s answer, a non-2xx one raised as :class:`ProviderError`."""
        return self._success(*self._request(function, **kwargs))

    @staticmethod
    def _success(status: int, answer: Any) -> Any:
        """``answer``, when ``status`` says it is one; else :class:`ProviderError`."""
        if not 200 <= status < 300:
            detail = answer if isinstance(answer, dict) else {}
            raise ProviderError(
                f"WeChat Pay: {status} {detail.get('code', '')} {detail.get('message', '')}"
            )
        return answer

    def _notify_url(self, payment: Payment) -> str:
        return notify_url(self.name, payment.order.community_id)

    # Starting a payment --------------------------------------------------------------

    def start_payment(self, payment: Payment, payer: Payer) -> PaymentStart:
        method = self._check_start(payment, payer)
        order = payment.order
        pay_type, extra = {
            "native": (WeChatPayType.NATIVE, {}),
            "mweb": (
                WeChatPayType.H5,
                {"scene_info": {"payer_client_ip": payer.client_ip, "h5_info": {"type": "Wap"}}},
            ),
            "jsapi": (WeChatPayType.JSAPI, {"payer": {"openid": payer.wechat_openid}}),
        }[method]
        result = self._call(
            self._client.pay,
            description=self._description(payment),
            out_trade_no=payment.public_id,
            amount={"total": payment.amount, "currency": payment.currency},
            time_expire=order.expires_at.astimezone(_CHINA).isoformat(timespec="seconds"),
            notify_url=self._notify_url(payment),
            pay_type=pay_type,
            **extra,
        )
        try:
            if method == "native":
                answer = {"code_url": result["code_url"]}
            elif method == "mweb":
                answer = {"h5_url": result["h5_url"]}
            else:
                answer = {"jsapi": self._jsapi_params(result["prepay_id"])}
        except (KeyError, TypeError) as error:
            raise ProviderError(f"WeChat Pay: an answer without {error}") from error
        return self._started(payment, method, payer, answer)

    def _jsapi_params(self, prepay_id: str) -> dict[str, str]:
        """What the page gives ``WeixinJSBridge``'s ``getBrandWCPayRequest``: v3 signs
        them with the merchant's RSA key (``signType: RSA``)."""
        params = {
            "appId": self.app_id,
            "timeStamp": str(int(utcnow().timestamp())),
            "nonceStr": secrets.token_hex(16),
            "package": f"prepay_id={prepay_id}",
            "signType": "RSA",
        }
        signed = [params["appId"], params["timeStamp"], params["nonceStr"], params["package"]]
        params["paySign"] = self._client.sign(signed)
        return params

    # Notifications -------------------------------------------------------------------

    @staticmethod
    def _is_v2(headers: Mapping[str, str]) -> bool:
        """Whether a delivery is v2's (XML, signed in its body): v3 signs in headers."""
        return not any(name.lower() == "wechatpay-signature" for name in headers.keys())  # noqa: SIM118 (werkzeug's Headers iterate as pairs)

    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        if self._is_v2(headers):
            if self._v2 is None:
                raise InvalidNotification("no Wechatpay-Signature (and no API v2 key is set)")
            return self._v2.parse_notification(body, headers, received_at=received_at)
        envelope, resource = self._verified(body, headers, received_at)
        event_type = envelope.get("event_type")
        if event_type == "TRANSACTION.SUCCESS":
            return self._payment_notification(resource)
        if isinstance(event_type, str) and event_type.startswith("REFUND."):
            return self._refund_notification(resource)
        return Notification(event_id=f"v3:{envelope.get('id')}", kind=EventKind.IGNORED)

    def _verified(
        self, body: bytes, headers: Mapping[str, str], received_at: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The notification's envelope and its decrypted resource, once its signature is
        checked under our rules (see the module's docstring)."""
        header = {name.lower(): value for name, value in headers.items()}
        signature = header.get("wechatpay-signature", "")
        if signature.startswith(SIGNTEST_PREFIX):
            raise InvalidNotification("a WECHATPAY/SIGNTEST/ probe is refused like any forgery")
        if header.get("wechatpay-signature-type") != SIGNATURE_TYPE:
            raise InvalidNotification(f"Wechatpay-Signature-Type is not {SIGNATURE_TYPE}")
        timestamp, nonce = header.get("wechatpay-timestamp", ""), header.get("wechatpay-nonce")
        if not (timestamp.isascii() and timestamp.isdigit()) or not nonce:
            raise InvalidNotification("no Wechatpay-Timestamp or Wechatpay-Nonce")
        skew = abs(received_at.timestamp() - int(timestamp))
        if skew > MAX_CLOCK_SKEW.total_seconds():
            raise InvalidNotification(
                f"Wechatpay-Timestamp is {skew:.0f} s from its arrival (5 minutes at most)"
            )
        key = self._platform_key(header.get("wechatpay-serial", ""))
        if key is None:
            raise InvalidNotification("Wechatpay-Serial names no platform key we hold")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise InvalidNotification("the body is not UTF-8") from None
        if not rsa_verify(timestamp, nonce, text, signature, key):
            raise InvalidNotification("signature does not match")
        try:
            envelope = json.loads(text)
        except ValueError:
            raise InvalidNotification("not JSON") from None
        resource = envelope.get("resource") if isinstance(envelope, dict) else None
        if (
            not isinstance(resource, dict)
            or envelope.get("resource_type") != "encrypt-resource"
            or resource.get("algorithm") != "AEAD_AES_256_GCM"
            or not all(isinstance(resource.get(k), str) for k in ("nonce", "ciphertext"))
        ):
            raise InvalidNotification("no AEAD_AES_256_GCM resource")
        try:
            plain = aes_decrypt(
                nonce=resource["nonce"],
                ciphertext=resource["ciphertext"],
                associated_data=str(resource.get("associated_data") or ""),
                apiv3_key=self._api_v3_key,
            )
        except ValueError:  # not base64, a nonce of the wrong size
            plain = None
        if plain is None:
            raise InvalidNotification("the resource does not decrypt with our APIv3 key")
        try:
            decrypted = json.loads(plain)
        except ValueError:
            decrypted = None
        if not isinstance(decrypted, dict):
            raise InvalidNotification("the decrypted resource is not a JSON object")
        return envelope, decrypted

    def _platform_key(self, serial: str):
        """The platform public key ``serial`` names, or None when we hold none by it. In
        certificate mode an unknown serial fetches the certificates again (a new one
        after WeChat Pay rotated them), at most every :data:`CERTIFICATE_REFRESH_SECONDS`."""
        core = self._client._core
        if self._public_key_id is not None:
            return core._public_key if same_secret(serial, self._public_key_id) else None
        with self._certificates_lock:
            certificate = self._certificate(serial)
            now = time.monotonic()
            if certificate is None and now - self._certificates_fetched > (
                CERTIFICATE_REFRESH_SECONDS
            ):
                self._certificates_fetched = now
                core._update_certificates()
                certificate = self._certificate(serial)
        return certificate.public_key() if certificate is not None else None

    def _certificate(self, serial: str):
        """The held platform certificate whose serial (hexadecimal) is ``serial``."""
        try:
            number = int(serial, 16)
        except ValueError:
            return None
        return next(
            (c for c in self._client._core._certificates if c.serial_number == number), None
        )

    def _check_ours(self, resource: Mapping[str, Any]) -> None:
        """Refuse a resource for another merchant or app (refunds carry no appid)."""
        if not same_secret(str(resource.get("mchid", "")), self.mch_id):
            raise InvalidNotification("mchid is not ours")
        if "appid" in resource and not same_secret(str(resource["appid"]), self.app_id):
            raise InvalidNotification("appid is not ours")

    def _payment_notification(self, resource: dict[str, Any]) -> Notification:
        self._check_ours(resource)
        if "appid" not in resource:
            raise InvalidNotification("no appid")
        out_trade_no, transaction_id = resource.get("out_trade_no"), resource.get("transaction_id")
        if not (isinstance(out_trade_no, str) and isinstance(transaction_id, str)):
            raise InvalidNotification("no out_trade_no or transaction_id")
        if resource.get("trade_state") != "SUCCESS":
            raise InvalidNotification(f"trade_state {resource.get('trade_state')!r}")
        return self._paid(resource, out_trade_no, transaction_id)

    def _paid(self, resource: Mapping[str, Any], out_trade_no: str, transaction_id: str):
        """A successful payment: the amount is the order's ``total`` (the payer may pay
        less with a WeChat coupon, never more), compared with ours by the inbox."""
        amount = _money(resource.get("amount"), "total")
        if _fen(resource["amount"], "payer_total") > amount.amount:
            raise InvalidNotification("amount.payer_total is over amount.total")
        return Notification(
            # v2's id for the same payment: a v2 and a v3 delivery of it count once.
            event_id=f"pay:{transaction_id}",
            kind=EventKind.PAYMENT_SUCCEEDED,
            payment_public_id=out_trade_no,
            payment_external_id=transaction_id,
            amount=amount,
        )

    def _refund_notification(self, resource: dict[str, Any]) -> Notification:
        self._check_ours(resource)
        ids = [resource.get(k) for k in ("out_trade_no", "out_refund_no", "refund_id")]
        if not all(isinstance(i, str) and i for i in ids):
            raise InvalidNotification("refund result without its ids")
        out_trade_no, out_refund_no, refund_id = ids
        status = resource.get("refund_status")
        return Notification(
            event_id=f"refund:{refund_id}:{status}",
            kind=EventKind.REFUND_SUCCEEDED if status == "SUCCESS" else EventKind.REFUND_FAILED,
            payment_public_id=out_trade_no,
            payment_external_id=resource.get("transaction_id"),
            amount=_money(resource.get("amount"), "refund"),
            payment_amount=_money(resource.get("amount"), "total"),
            refund_public_id=out_refund_no,
            refund_external_id=refund_id,
            reason=str(status),
        )

    def acknowledge(self, accepted: bool, message: str, status: int) -> Response:
        """v3's answer: 204 with no body when accepted, else the status with a JSON
        ``code`` and ``message`` (WeChat Pay delivers again). A v2 delivery (see
        :meth:`_is_v2`) gets v2's XML answer."""
        if self._v2 is not None and self._is_v2(request.headers):
            return self._v2.acknowledge(accepted, message, status)
        if accepted:
            return Response(status=204)
        response = jsonify({"code": "FAIL", "message": message[:200]})
        response.status_code = status
        return response

    # Refunds, queries, bills ---------------------------------------------------------

    def request_refund(self, refund: Refund, transaction_id: str | None) -> RefundResult:
        payment = refund.payment
        result = self._call(
            self._client.refund,
            out_refund_no=refund.public_id,
            amount={"refund": refund.amount, "total": payment.amount, "currency": refund.currency},
            transaction_id=transaction_id,
            out_trade_no=payment.public_id,
            reason=refund.reason[:80] or None,
            notify_url=self._notify_url(payment),
        )
        state = result.get("status")
        # PROCESSING: WeChat Pay's notification says when the money is back.
        return RefundResult(
            external_id=result.get("refund_id"),
            succeeded={"SUCCESS": True, "CLOSED": False, "ABNORMAL": False}.get(state),
            reason=state,
        )

    def query_payment(self, payment: Payment, *, now: datetime) -> Notification | None:
        status, result = self._request(self._client.query, out_trade_no=payment.public_id)
        if status == 404 and isinstance(result, dict) and result.get("code") == "ORDER_NOT_EXIST":
            return None  # never registered, or not yet: nothing was paid
        result = self._success(status, result)
        state = result.get("trade_state")
        if result.get("out_trade_no") != payment.public_id:
            raise ProviderError("WeChat Pay: the answer is about another order")
        if state in ("SUCCESS", "REFUND"):  # REFUND: paid, then (partly) refunded
            try:
                return self._paid(result, payment.public_id, str(result["transaction_id"]))
            except (InvalidNotification, KeyError) as error:
                raise ProviderError(f"WeChat Pay: {error}") from error
        return self.unpaid_answer(payment, state, result.get("trade_state_desc"))

    def close_payment(self, payment: Payment) -> None:
        self._call(self._client.close, out_trade_no=payment.public_id)

    def download_bill(self, day: date) -> str:
        """The day's trade bill (``bill_type=ALL``), in the text
        :func:`payments.reconciliation.read_wechat_bill` reads (v3's bill has v2's
        columns). The file itself is not signed: its SHA1 comes in the signed answer that
        gives its address, and is checked against the unzipped bill."""
        bill = self._call(
            self._client.trade_bill, bill_date=day.isoformat(), bill_type="ALL", tar_type="GZIP"
        )
        url = str(bill.get("download_url", ""))
        if not url.startswith(self._api_base + "/") or bill.get("hash_type") != "SHA1":
            raise ProviderError("WeChat Pay: no bill address on its API, or no SHA1 of the bill")
        content = self._call(self._client.download_bill, url=url)
        try:
            data = gzip.decompress(content)
        except (OSError, EOFError, TypeError, zlib.error) as error:
            raise ProviderError(f"WeChat Pay: the bill is not gzip: {error}") from error
        digest = hashlib.sha1(data).hexdigest()  # noqa: S324 (WeChat Pay's checksum, not ours)
        if not same_secret(digest, str(bill.get("hash_value", "")).lower()):
            raise ProviderError("WeChat Pay: the bill does not match its SHA1")
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ProviderError("WeChat Pay: the bill is not UTF-8") from error
