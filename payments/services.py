"""The payment state machine. Functions here flush but never commit; the caller commits.

An order is paid when its confirmed payments cover its amount. Confirming a payment locks
its row and its order's row, returns early when already confirmed, appends the ledger
entry and, on the order's first transition to paid, sends ``order_paid``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from core import audit
from core.clock import utcnow
from core.db import db
from core.money import Money
from core.security import new_token
from payments.models import (
    LedgerEntry,
    Order,
    OrderStatus,
    Payment,
    PaymentStatus,
    ProviderReference,
)
from payments.providers import Notification, Outcome, get_provider
from payments.signals import order_paid


class PaymentError(Exception):
    """A request about money that cannot be honoured; nothing was changed."""


class OrderClosed(PaymentError):
    """The order takes no new payment attempts (paid, or expired)."""


class PaymentMismatch(PaymentError):
    """A genuine notification that does not match our records (unknown payment, amount or
    currency): refused, nothing changes."""


def create_order(
    price: Money, description: str, *, actor: str, now: datetime | None = None
) -> Order:
    """A new open order for ``price``, taking payment for ``ORDER_TTL_MINUTES``."""
    now = now or utcnow()
    if price.amount <= 0:
        raise PaymentError("an order is for a positive amount")
    order = Order(
        public_id=new_token(16),
        amount=price.amount,
        currency=price.currency,
        description=description[:120],
        status=OrderStatus.OPEN,
        created_at=now,
        expires_at=now + timedelta(minutes=current_app.config["ORDER_TTL_MINUTES"]),
    )
    db.session.add(order)
    audit.record("order.created", order, actor=actor, data={"amount": str(price)}, now=now)
    return order


def start_payment(
    order: Order,
    provider_name: str,
    *,
    return_url: str,
    cancel_url: str,
    actor: str,
    now: datetime | None = None,
) -> tuple[Payment, str]:
    """A payment attempt for the whole of ``order`` and the URL to send the payer to.

    Asking again for the same order and provider while an attempt is still waiting gives
    that attempt back, so a double click never opens two payments.
    """
    now = now or utcnow()
    provider = get_provider(provider_name)
    if provider is None:
        raise PaymentError(f"payment provider {provider_name!r} is not offered")
    if order.status is OrderStatus.PAID:
        raise OrderClosed("订单已支付 · This order is paid already")
    if order.expires_at <= now:
        if order.status is OrderStatus.OPEN:
            order.status = OrderStatus.EXPIRED
            audit.record("order.expired", order, actor=actor, now=now)
        raise OrderClosed("订单已过期，请重新下单 · This order has expired, please start again")
    waiting = next(
        (
            p
            for p in order.payments
            if p.provider == provider_name and p.status is PaymentStatus.CREATED
        ),
        None,
    )
    if waiting is not None:
        return waiting, provider.start_payment(waiting)
    payment = Payment(
        public_id=new_token(16),
        order=order,
        provider=provider_name,
        amount=order.amount,
        currency=order.currency,
        status=PaymentStatus.CREATED,
        return_url=return_url,
        cancel_url=cancel_url,
        created_at=now,
    )
    db.session.add(payment)
    audit.record("payment.started", payment, actor=actor, data={"provider": provider_name}, now=now)
    return payment, provider.start_payment(payment)


def _lock_payment(public_id: str) -> Payment | None:
    """The payment and its order, both locked for update until the transaction ends.

    Payment first, then order: every path takes them in this order, so two deliveries for
    the same order queue instead of deadlocking.
    """
    payment = db.session.scalar(
        sa.select(Payment).where(Payment.public_id == public_id).with_for_update()
    )
    if payment is not None:
        db.session.scalar(
            sa.select(Order)
            .where(Order.id == payment.order_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    return payment


def apply_notification(
    notification: Notification, provider_name: str, *, now: datetime | None = None
) -> tuple[Payment, bool]:
    """Apply a verified notification to our payment. Returns the payment and whether its
    state changed (False for a redelivery). Raises :class:`PaymentMismatch` when it does not
    match our records."""
    now = now or utcnow()
    payment = _lock_payment(notification.payment_public_id)
    if payment is None or payment.provider != provider_name:
        raise PaymentMismatch("unknown payment")
    if notification.amount != payment.money:
        raise PaymentMismatch(
            f"amount {notification.amount.amount} {notification.amount.currency} does not "
            f"match the payment's {payment.amount} {payment.currency}"
        )
    actor = f"webhook:{provider_name}"
    if notification.outcome is Outcome.SUCCEEDED:
        return payment, confirm_payment(payment, notification.external_id, actor=actor, now=now)
    if payment.status is not PaymentStatus.CREATED:
        # A failure or cancel after any other outcome changes nothing: money that was
        # confirmed stays confirmed.
        return payment, False
    if notification.outcome is Outcome.FAILED:
        payment.status = PaymentStatus.FAILED
        payment.failure_reason = (notification.reason or "")[:200] or None
    else:
        payment.status = PaymentStatus.CANCELLED
    audit.record(f"payment.{payment.status}", payment, actor=actor, now=now)
    return payment, True


def confirm_payment(
    payment: Payment, external_id: str | None, *, actor: str, now: datetime
) -> bool:
    """Record that ``payment``'s money moved. The caller holds the payment's row lock.

    Returns False when it was confirmed already. A payment confirmed after it failed, was
    cancelled or its order expired is still money received: it counts.
    """
    if payment.status is PaymentStatus.CONFIRMED:
        return False
    payment.status = PaymentStatus.CONFIRMED
    payment.confirmed_at = now
    if external_id:
        db.session.add(
            ProviderReference(
                provider=payment.provider, external_id=external_id, payment_id=payment.id
            )
        )
    db.session.add(
        LedgerEntry(
            created_at=now,
            kind="payment",
            amount=payment.amount,
            currency=payment.currency,
            order_id=payment.order_id,
            payment_id=payment.id,
            provider=payment.provider,
            provider_transaction_id=external_id,
        )
    )
    audit.record(
        "payment.confirmed", payment, actor=actor, data={"amount": str(payment.money)}, now=now
    )
    order = payment.order
    if order.status is OrderStatus.PAID:
        # Paid twice: the money is kept in the ledger and shown to admins for a refund.
        audit.record("order.paid_again", order, actor=actor, data={"payment": payment.id}, now=now)
        return True
    if order.confirmed_total().amount >= order.amount:
        order.status = OrderStatus.PAID
        order.paid_at = now
        audit.record("order.paid", order, actor=actor, now=now)
        order_paid.send(order, now=now)
    return True
