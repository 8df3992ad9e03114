"""Stripe: a Checkout Session per payment attempt; webhooks verified by the stripe library.

Our payment's public id rides in the session's and the payment intent's metadata, so
every later event (refunds, disputes name only the payment intent) leads back to it. The
API address can be changed (``STRIPE_API_BASE``) for sandboxes and the tests' local fake.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import stripe
from flask_babel import lazy_gettext as _l

from core.money import CURRENCIES, Money
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
)

#: Seconds a delivery's signature may be from its arrival, either way (Stripe's default).
TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE
#: Stripe keeps a Checkout Session payable for at least this long, at most a day.
SESSION_LIFETIME = (timedelta(minutes=31), timedelta(hours=23, minutes=59))

_SESSION_EVENTS = {
    "checkout.session.async_payment_succeeded": EventKind.PAYMENT_SUCCEEDED,
    "checkout.session.async_payment_failed": EventKind.PAYMENT_FAILED,
    "checkout.session.expired": EventKind.PAYMENT_EXPIRED,
}


def _money(amount: Any, currency: Any) -> Money:
    code = str(currency).upper()
    if type(amount) is not int or code not in CURRENCIES:
        raise InvalidNotification(f"not an amount we sell in: {amount!r} {currency!r}")
    return Money(amount, code)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


def _signed_at(header: str) -> int:
    """The ``t=`` timestamp of a Stripe-Signature header (verified by then)."""
    stamps = [v for k, _, v in (p.partition("=") for p in header.split(",")) if k == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise InvalidNotification("Stripe: no single timestamp in the signature")
    return int(stamps[0])


class StripeProvider(PaymentProvider):
    name = "stripe"
    label = _l("Card and more (Stripe)")

    def __init__(self, secret_key: str, webhook_secret: str, api_base: str | None = None):
        self._webhook_secret = webhook_secret
        #: Live keys take live events only, test keys test events only.
        self._live = secret_key.startswith(("sk_live_", "rk_live_"))
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=stripe.RequestsClient(timeout=10),
            max_network_retries=2,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StripeProvider | None:
        if not (config.get("STRIPE_SECRET_KEY") and config.get("STRIPE_WEBHOOK_SECRET")):
            return None
        return cls(
            config["STRIPE_SECRET_KEY"],
            config["STRIPE_WEBHOOK_SECRET"],
            config.get("STRIPE_API_BASE"),
        )

    def method_for(self, payer: Payer) -> str:
        return "checkout"

    def start_payment(self, payment: Payment, payer: Payer) -> PaymentStart:
        order = payment.order
        metadata = {"order": order.public_id, "payment": payment.public_id}
        # Payable as long as the order, within what Stripe allows: a session left open for
        # Stripe's default day would take money for an order that ended long before.
        shortest, longest = (time.time() + limit.total_seconds() for limit in SESSION_LIFETIME)
        expires_at = int(min(max(order.expires_at.timestamp(), shortest), longest))
        try:
            session = self._client.v1.checkout.sessions.create(
                params={
                    "mode": "payment",
                    "client_reference_id": order.public_id,
                    "metadata": metadata,
                    "payment_intent_data": {"metadata": metadata},
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": payment.currency.lower(),
                                "unit_amount": payment.amount,
                                "product_data": {"name": order.description},
                            },
                        }
                    ],
                    "success_url": payment.return_url,
                    "cancel_url": payment.cancel_url,
                    "expires_at": expires_at,
                },
                options={"idempotency_key": f"checkout-{payment.public_id}"},
            )
        except stripe.StripeError as error:
            raise ProviderError(f"Stripe: {error.user_message or error}") from error
        return PaymentStart(
            url=session["url"],
            method="checkout",
            provider_data={"session": session["id"]},
            external_ids=(session["id"],),
        )

    def parse_notification(
        self, body: bytes, headers: Mapping[str, str], *, received_at: datetime
    ) -> Notification:
        """Verify the signature with the stripe library, then bound its timestamp in both
        directions against when the delivery arrived (the library bounds only the past,
        and only against today's clock: a replay from the inbox is checked against its
        arrival). Read as plain JSON: building Stripe objects is most of the cost."""
        signature = _header(headers, "Stripe-Signature")
        try:
            stripe.WebhookSignature.verify_header(body, signature, self._webhook_secret)
            if abs(received_at.timestamp() - _signed_at(signature)) > TOLERANCE_SECONDS:
                raise InvalidNotification("Stripe: signature timestamp outside the tolerance")
            event = json.loads(body)
            if event.get("livemode") is not self._live:
                mode = "live" if self._live else "test"
                raise InvalidNotification(f"Stripe: not a {mode}-mode event")
            return self._read_event(event)
        except (
            stripe.SignatureVerificationError,
            ValueError,  # not JSON, not UTF-8
            KeyError,
            TypeError,
            AttributeError,  # JSON that is not an object
        ) as error:
            raise InvalidNotification(f"Stripe: {error}") from error

    def _read_event(self, event: Any) -> Notification:
        kind, obj = event["type"], event["data"]["object"]
        common = {"event_id": event["id"]}
        if kind == "checkout.session.completed" or kind in _SESSION_EVENTS:
            if kind == "checkout.session.completed":
                # Paid now, or a delayed method that reports later ("unpaid").
                if obj["payment_status"] != "paid":
                    return Notification(kind=EventKind.IGNORED, **common)
                event_kind = EventKind.PAYMENT_SUCCEEDED
            else:
                event_kind = _SESSION_EVENTS[kind]
            return Notification(
                kind=event_kind,
                # None for another system's sale on the same account: not ours.
                payment_public_id=(obj.get("metadata") or {}).get("payment"),
                payment_external_id=obj.get("payment_intent"),
                amount=_money(obj["amount_total"], obj["currency"]),
                **common,
            )
        if kind == "charge.refunded":
            return Notification(
                kind=EventKind.REFUND_SUCCEEDED,
                payment_external_id=obj["payment_intent"],
                payment_amount=_money(obj["amount"], obj["currency"]),
                refunded_total=_money(obj["amount_refunded"], obj["currency"]),
                **common,
            )
        if kind in ("charge.dispute.created", "charge.dispute.closed"):
            if kind == "charge.dispute.created":
                event_kind = EventKind.DISPUTE_OPENED
            else:
                event_kind = {"won": EventKind.DISPUTE_WON, "lost": EventKind.DISPUTE_LOST}.get(
                    obj["status"], EventKind.IGNORED
                )
            amount = _money(obj["amount"], obj["currency"])
            return Notification(
                kind=event_kind,
                payment_external_id=obj["payment_intent"],
                amount=amount,
                # Disputes are for the whole charge unless Stripe says otherwise; a
                # partial one waits for the payment's own event (the check refuses it).
                payment_amount=amount,
                dispute_external_id=obj["id"],
                reason=obj.get("reason"),
                **common,
            )
        return Notification(kind=EventKind.IGNORED, **common)

    def lookup_payment_public_id(self, external_id: str) -> str | None:
        """Ours when the intent carries our payment's id; None when Stripe says there is
        no such intent (a definite answer, unlike an outage) or it is another sale."""
        try:
            intent = self._client.v1.payment_intents.retrieve(external_id)
        except stripe.InvalidRequestError as error:
            if error.code == "resource_missing":
                return None
            raise ProviderError(f"Stripe: {error}") from error
        except stripe.StripeError as error:
            raise ProviderError(f"Stripe: {error}") from error
        return (intent.to_dict().get("metadata") or {}).get("payment")

    def request_refund(self, refund: Refund, transaction_id: str | None) -> RefundResult:
        if not transaction_id:
            raise ProviderError("Stripe: the payment intent of this payment is not known")
        try:
            refund_object = self._client.v1.refunds.create(
                params={
                    "payment_intent": transaction_id,
                    "amount": refund.amount,
                    "metadata": {"refund": refund.public_id},
                },
                options={"idempotency_key": f"refund-{refund.public_id}"},
            )
        except stripe.StripeError as error:
            raise ProviderError(f"Stripe: {error.user_message or error}") from error
        result = refund_object.to_dict()
        succeeded = {"succeeded": True, "failed": False, "canceled": False}.get(result["status"])
        return RefundResult(
            external_id=result["id"], succeeded=succeeded, reason=result.get("failure_reason")
        )

    def query_payment(self, payment: Payment, *, now: datetime) -> Notification | None:
        session_id = payment.provider_data.get("session")
        if not session_id:
            return None
        try:
            session = self._client.v1.checkout.sessions.retrieve(session_id).to_dict()
        except stripe.StripeError as error:
            raise ProviderError(f"Stripe: {error}") from error
        common = {
            "payment_public_id": payment.public_id,
            "payment_external_id": session.get("payment_intent"),
            "amount": _money(session["amount_total"], session["currency"]),
        }
        if session["payment_status"] == "paid":
            return Notification(
                event_id=f"query:{session_id}:paid", kind=EventKind.PAYMENT_SUCCEEDED, **common
            )
        if session["status"] == "expired":
            return Notification(
                event_id=f"query:{session_id}:expired", kind=EventKind.PAYMENT_EXPIRED, **common
            )
        return None

    def close_payment(self, payment: Payment) -> None:
        session_id = payment.provider_data.get("session")
        if not session_id:
            return
        try:
            self._client.v1.checkout.sessions.expire(session_id)
        except stripe.StripeError as error:
            raise ProviderError(f"Stripe: {error}") from error
