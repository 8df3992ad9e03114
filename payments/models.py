"""What is owed (orders), each attempt to pay it (payments), how providers name those
attempts (provider references), every notification received (the inbox) and every movement
of money (the ledger)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import UTCDateTime, db, enum_column
from core.money import Money


class OrderStatus(StrEnum):
    OPEN = "open"  #: waiting for payment
    PAID = "paid"  #: confirmed payments cover the amount
    EXPIRED = "expired"  #: not paid in time; a late payment still makes it paid


class PaymentStatus(StrEnum):
    CREATED = "created"  #: sent to the provider, no answer yet
    CONFIRMED = "confirmed"  #: the provider confirmed the money moved
    FAILED = "failed"  #: the provider says it did not, and will not
    CANCELLED = "cancelled"  #: the payer gave up at the provider


class InboxStatus(StrEnum):
    RECEIVED = "received"  #: stored, not yet processed
    PROCESSED = "processed"  #: verified and applied
    DUPLICATE = "duplicate"  #: verified; an earlier delivery of the same event was applied
    REJECTED = "rejected"  #: failed verification or did not match our records: no change
    FAILED = "failed"  #: our side failed while applying it; the provider retries, or replay


class Order(db.Model):
    """What someone owes for one thing: an entry, a renewal, a course."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; names the order in URLs and to providers.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    #: Minor units of ``currency``.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: Shown to the payer at the provider (WeChat Pay's ``body``: at most 128 bytes).
    description: Mapped[str] = mapped_column(sa.String(120))
    status: Mapped[OrderStatus] = mapped_column(
        enum_column(OrderStatus),
        default=OrderStatus.OPEN,
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: After this an open order takes no new payment attempts.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    payments: Mapped[list[Payment]] = relationship(back_populates="order", order_by="Payment.id")

    @property
    def price(self) -> Money:
        return Money(self.amount, self.currency)

    def confirmed_total(self) -> Money:
        total = sum(p.amount for p in self.payments if p.status is PaymentStatus.CONFIRMED)
        return Money(total, self.currency)


class Payment(db.Model):
    """One attempt to move a specific amount for an order, through one provider."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; our reference at the provider (WeChat's out_trade_no: ≤ 32 chars).
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[PaymentStatus] = mapped_column(
        enum_column(PaymentStatus),
        default=PaymentStatus.CREATED,
    )
    #: Where the provider sends the payer back after paying, or after giving up.
    return_url: Mapped[str] = mapped_column(sa.String(500))
    cancel_url: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The provider's words when it failed.
    failure_reason: Mapped[str | None] = mapped_column(sa.String(200))

    order: Mapped[Order] = relationship(back_populates="payments")

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)


class ProviderReference(db.Model):
    """How a provider names one of our payments (transaction id, session id …)."""

    __tablename__ = "provider_references"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    external_id: Mapped[str] = mapped_column(sa.String(128))
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)

    __table_args__ = (sa.UniqueConstraint("provider", "external_id"),)


class WebhookEvent(db.Model):
    """One delivery of a provider notification, stored raw before anything else happens."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: The request as it came: headers (without cookies) and body bytes.
    headers: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    status: Mapped[InboxStatus] = mapped_column(
        enum_column(InboxStatus),
        default=InboxStatus.RECEIVED,
    )
    #: The provider's id for the event, once the signature has been verified.
    event_id: Mapped[str | None] = mapped_column(sa.String(128))
    payment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payments.id"))
    #: Why it was rejected or failed, or which earlier event it repeats.
    detail: Mapped[str | None] = mapped_column(sa.Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index(None, "provider", "event_id"),)


class LedgerEntry(db.Model):
    """One movement of money, appended in the transaction that moved it. Never changed."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: ``payment`` for money in; refunds, fees and disputes come with real providers.
    kind: Mapped[str] = mapped_column(sa.String(20))
    #: Signed minor units: money in is positive, money out negative.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    #: The provider's transaction id, for reconciliation.
    provider_transaction_id: Mapped[str | None] = mapped_column(sa.String(128))


@event.listens_for(LedgerEntry, "before_update")
@event.listens_for(LedgerEntry, "before_delete")
def _ledger_is_append_only(_mapper, _connection, entry: LedgerEntry) -> None:
    raise RuntimeError(f"ledger entry {entry.id} is immutable: append a correcting entry")
