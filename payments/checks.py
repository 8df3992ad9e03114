"""The ledger's consistency checks (see :mod:`core.checks`): every movement of money the
states of payments, refunds and disputes say happened is in the ledger once, with the
right sign and currency, and no other; and each order's state agrees with its payments."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from core.checks import consistency_check
from core.db import db
from payments.models import (
    Dispute,
    DisputeStatus,
    LedgerEntry,
    Order,
    OrderStatus,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
)


def _ledger_sum(kinds: tuple[str, ...], column: sa.ColumnElement) -> sa.ScalarSelect:
    """The sum of the ledger entries of ``kinds`` whose ``column`` matches (0 for none)."""
    return (
        sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.amount), 0))
        .where(LedgerEntry.kind.in_(kinds), column)
        .scalar_subquery()
    )


@consistency_check("ledger agrees with payments")
def payments_in_ledger(_now: datetime) -> Iterable[str]:
    """A confirmed payment has its amount in the ledger; any other has nothing."""
    booked = _ledger_sum(("payment",), LedgerEntry.payment_id == Payment.id)
    expected = sa.case((Payment.status == PaymentStatus.CONFIRMED, Payment.amount), else_=0)
    rows = db.session.execute(
        sa.select(Payment.id, Payment.status, expected, booked).where(booked != expected)
    )
    for payment_id, status, should, is_ in rows:
        yield f"payment {payment_id} ({status}): ledger holds {is_}, should hold {should}"


@consistency_check("ledger agrees with refunds")
def refunds_in_ledger(_now: datetime) -> Iterable[str]:
    """A succeeded refund has its amount out of the ledger; any other has nothing."""
    booked = _ledger_sum(("refund",), LedgerEntry.refund_id == Refund.id)
    expected = sa.case((Refund.status == RefundStatus.SUCCEEDED, -Refund.amount), else_=0)
    rows = db.session.execute(
        sa.select(Refund.id, Refund.status, expected, booked).where(booked != expected)
    )
    for refund_id, status, should, is_ in rows:
        yield f"refund {refund_id} ({status}): ledger holds {is_}, should hold {should}"


@consistency_check("ledger agrees with disputes")
def disputes_in_ledger(_now: datetime) -> Iterable[str]:
    """An open or lost dispute has its amount out of the ledger; a won one nets to zero."""
    booked = _ledger_sum(("dispute", "dispute_won"), LedgerEntry.dispute_id == Dispute.id)
    expected = sa.case((Dispute.status == DisputeStatus.WON, 0), else_=-Dispute.amount)
    rows = db.session.execute(
        sa.select(Dispute.id, Dispute.status, expected, booked).where(booked != expected)
    )
    for dispute_id, status, should, is_ in rows:
        yield f"dispute {dispute_id} ({status}): ledger holds {is_}, should hold {should}"


@consistency_check("ledger entries match their order and currency")
def ledger_entries_belong(_now: datetime) -> Iterable[str]:
    """Each entry names its payment's order and is in that order's currency."""
    rows = db.session.execute(
        sa.select(LedgerEntry.id, LedgerEntry.order_id, Payment.order_id)
        .join(Payment, Payment.id == LedgerEntry.payment_id)
        .join(Order, Order.id == Payment.order_id)
        .where(
            sa.or_(
                LedgerEntry.order_id != Payment.order_id,
                LedgerEntry.currency != Order.currency,
                Payment.currency != Order.currency,
            )
        )
    )
    for entry_id, entry_order, payment_order in rows:
        yield (
            f"ledger entry {entry_id}: order {entry_order}, its payment's order "
            f"{payment_order}, or a currency that is not the order's"
        )


@consistency_check("order states agree with their payments")
def orders_agree(_now: datetime) -> Iterable[str]:
    """A paid or refunded order was covered by confirmed payments and has its paid time;
    an open or expired one is not covered (a payment that covers it makes it paid); a
    refunded one had money go back (a refund, or a chargeback lost)."""
    confirmed = (
        sa.select(sa.func.coalesce(sa.func.sum(Payment.amount), 0))
        .where(Payment.order_id == Order.id, Payment.status == PaymentStatus.CONFIRMED)
        .scalar_subquery()
    )
    refunded = (
        sa.select(sa.func.coalesce(sa.func.sum(Refund.amount), 0))
        .join(Payment, Payment.id == Refund.payment_id)
        .where(Payment.order_id == Order.id, Refund.status == RefundStatus.SUCCEEDED)
        .scalar_subquery()
    )
    lost = (
        sa.select(sa.func.coalesce(sa.func.sum(Dispute.amount), 0))
        .join(Payment, Payment.id == Dispute.payment_id)
        .where(Payment.order_id == Order.id, Dispute.status == DisputeStatus.LOST)
        .scalar_subquery()
    )
    settled = Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED])
    wrong = sa.or_(
        sa.and_(settled, sa.or_(confirmed < Order.amount, Order.paid_at.is_(None))),
        sa.and_(~settled, Order.amount > 0, confirmed >= Order.amount),
        sa.and_(Order.status == OrderStatus.REFUNDED, refunded + lost == 0),
    )
    rows = db.session.execute(
        sa.select(Order.id, Order.status, Order.amount, confirmed, refunded + lost).where(wrong)
    )
    for order_id, status, amount, paid, given_back in rows:
        yield (
            f"order {order_id} is {status}: owes {amount}, confirmed payments {paid}, "
            f"given back {given_back}"
        )
