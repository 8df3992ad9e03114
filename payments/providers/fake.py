"""The ``fake`` provider: a local cashier that behaves like a real provider, with no keys.

Its cashier page lets the payer pay, fail or cancel. Like a real provider it then sends a
signed notification into the webhook inbox (the same code path as ``POST /webhooks/fake``),
and sends the payer back to our return URL. The signature scheme follows Stripe's: a header
``Fake-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, checked against a
300-second tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime

from flask import url_for
from flask_babel import lazy_gettext as _l

from core.money import CURRENCIES, Money
from core.security import same_secret
from payments.models import Payment, Refund
from payments.providers import (
    EventKind,
    InvalidNotification,
    Notification,
    Payer,
    PaymentProvider,
    PaymentStart,
    RefundResult,
)

#: The events the fake provider's cashier can send, by the ``type`` they carry.
EVENT_TYPES = {
    "payment.succeeded": EventKind.PAYMENT_SUCCEEDED,
    "payment.failed": EventKind.PAYMENT_FAILED,
    "payment.cancelled": EventKind.PAYMENT_CANCELLED,
}

SIGNATURE_HEADER = "Fake-Signature"
TOLERANCE_SECONDS = 300


class FakeProvider(PaymentProvider):
    name = "fake"
    label = _l("Demo payment")

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> FakeProvider:
        secret = config.get("FAKE_PROVIDER_SECRET")
        if not secret:
            # Derived, so a demo needs no setting, yet it is not the session key itself.
            secret = hmac.new(
                str(config["SECRET_KEY"]).encode(), b"qunmen.fake-provider", hashlib.sha256
            ).hexdigest()
        return cls(str(secret))

    def method_for(self, payer: Payer) -> str:
        return "cashier"

    def start_payment(self, payment: Payment, payer: Payer) -> PaymentStart:
        return PaymentStart(
            url=url_for("fake_cashier.cashier", payment_public_id=payment.public_id),
            method="cashier",
        )

    def request_refund(self, refund: Refund, transaction_id: str | None) -> RefundResult:
        """The fake provider refunds at once, as card refunds at Stripe often do."""
        return RefundResult(external_id=f"fake_refund_{refund.public_id}", succeeded=True)

    def query_payment(self, payment: Payment, *, now: datetime) -> Notification | None:
        """Nothing is paid at the fake provider but through its cashier, which notifies."""
        return None

    def sign(self, body: bytes, timestamp: int) -> str:
        """The signature header value for ``body`` sent at ``timestamp``."""
        mac = hmac.new(self._secret, f"{timestamp}.".encode() + body, hashlib.sha256)
        return f"t={timestamp},v1={mac.hexdigest()}"

    def build_notification(
        self,
        payment: Payment,
        kind: EventKind,
        *,
        event_id: str,
        transaction_id: str,
        now: datetime,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers the fake provider's server sends for ``payment``."""
        body = json.dumps(
            {
                "id": event_id,
                "type": next(t for t, k in EVENT_TYPES.items() if k is kind),
                "created": int(now.timestamp()),
                "data": {
                    "out_trade_no": payment.public_id,
                    "amount": payment.amount,
                    "currency": payment.currency,
                    "transaction_id": transaction_id,
                },
            },
            separators=(",", ":"),
        ).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body, int(now.timestamp())),
        }
        return body, headers

    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        self._verify(body, headers, received_at)
        try:
            event = json.loads(body)
            data = event["data"]
            kind = EVENT_TYPES[event["type"]]
            amount, currency = data["amount"], data["currency"]
            fields = (event["id"], data["out_trade_no"], data["transaction_id"], currency)
            if not all(isinstance(value, str) and value for value in fields):
                raise TypeError("ids and currency must be non-empty strings")
            if type(amount) is not int or currency not in CURRENCIES:
                raise TypeError("amount must be integer minor units of a known currency")
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidNotification(f"malformed notification: {error}") from error
        return Notification(
            event_id=event["id"],
            kind=kind,
            payment_public_id=data["out_trade_no"],
            payment_external_id=data["transaction_id"],
            amount=Money(amount, currency),
            reason="simulated failure" if kind is EventKind.PAYMENT_FAILED else None,
        )

    def _verify(self, body: bytes, headers: Mapping[str, str], received_at: datetime) -> None:
        header = next(
            (v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None
        )
        if not header:
            raise InvalidNotification("no signature header")
        parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        timestamp, signature = parts.get("t", ""), parts.get("v1", "")
        if not timestamp.isascii() or not timestamp.isdigit() or not signature:
            raise InvalidNotification("malformed signature header")
        if abs(received_at.timestamp() - int(timestamp)) > TOLERANCE_SECONDS:
            raise InvalidNotification("signature timestamp outside the tolerance")
        expected = self.sign(body, int(timestamp)).rpartition("v1=")[2]
        if not same_secret(expected, signature):
            raise InvalidNotification("signature does not match")
