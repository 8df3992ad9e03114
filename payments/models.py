"""What is owed (orders), each attempt to pay it (payments), how providers name those
attempts (provider references), every notification received (the inbox) and every movement
of money (the ledger)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from sqlalchemy import event
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import UTCDateTime, db, enum_column
from core.labels import enum_labels
from core.money import Money


class OrderStatus(StrEnum):
    OPEN = "open"  #: waiting for payment
    PAID = "paid"  #: confirmed payments cover the amount
    EXPIRED = "expired"  #: not paid in time; a late payment still makes it paid
    REFUNDED = "refunded"  #: was paid; refunds or lost disputes took the money back


ORDER_STATUS_LABELS = enum_labels(
    OrderStatus,
    {
        OrderStatus.OPEN: lazy_pgettext("status", "Waiting for payment"),
        OrderStatus.PAID: lazy_pgettext("status", "Paid"),
        OrderStatus.EXPIRED: lazy_pgettext("status", "Expired"),
        OrderStatus.REFUNDED: lazy_pgettext("status", "Refunded"),
    },
)


class PaymentStatus(StrEnum):
    CREATED = "created"  #: sent to the provider, no answer yet
    CONFIRMED = "confirmed"  #: the provider confirmed the money moved
    FAILED = "failed"  #: the provider says it did not, and will not
    CANCELLED = "cancelled"  #: the payer gave up at the provider
    EXPIRED = "expired"  #: the provider closed the attempt unpaid


PAYMENT_STATUS_LABELS = enum_labels(
    PaymentStatus,
    {
        PaymentStatus.CREATED: lazy_pgettext("status", "Started"),
        PaymentStatus.CONFIRMED: lazy_pgettext("status", "Confirmed"),
        PaymentStatus.FAILED: lazy_pgettext("status", "Failed"),
        PaymentStatus.CANCELLED: lazy_pgettext("status", "Cancelled"),
        PaymentStatus.EXPIRED: lazy_pgettext("status", "Expired"),
    },
)


class RefundStatus(StrEnum):
    REQUESTED = "requested"  #: asked of the provider, no final answer yet
    SUCCEEDED = "succeeded"  #: the money went back
    FAILED = "failed"  #: the provider refused or could not


REFUND_STATUS_LABELS = enum_labels(
    RefundStatus,
    {
        RefundStatus.REQUESTED: lazy_pgettext("status", "Requested"),
        RefundStatus.SUCCEEDED: lazy_pgettext("status", "Refunded"),
        RefundStatus.FAILED: lazy_pgettext("status", "Failed"),
    },
)


class DisputeStatus(StrEnum):
    OPEN = "open"  #: the payer's bank took the money back pending a decision
    WON = "won"  #: decided for us: the money came back
    LOST = "lost"  #: decided for the payer


DISPUTE_STATUS_LABELS = enum_labels(
    DisputeStatus,
    {
        DisputeStatus.OPEN: lazy_pgettext("status", "Open"),
        DisputeStatus.WON: lazy_pgettext("status", "Won"),
        DisputeStatus.LOST: lazy_pgettext("status", "Lost"),
    },
)


class FlagKind(StrEnum):
    """Why an order needs a person's attention (see :class:`OrderFlag`)."""

    #: A payment came for an order its other payments cover already: refund this one.
    PAID_TWICE = "paid_twice"
    #: The buyer held what the order bought already (another order of theirs paid for
    #: it): refund this order's payment.
    BOUGHT_TWICE = "bought_twice"
    #: A renewal paid for a membership that had been ended (a refund, a lost chargeback,
    #: an admin): refund it, or let the member back.
    PAID_AFTER_END = "paid_after_end"
    #: The provider reported a second transaction for a payment it had confirmed.
    SECOND_TRANSACTION = "second_transaction"
    #: Paid after the order expired and its coupon went to someone else: the price paid
    #: holds, but the coupon was not used a time more than its limit.
    COUPON_OVER_LIMIT = "coupon_over_limit"


FLAG_KIND_LABELS = enum_labels(
    FlagKind,
    {
        FlagKind.PAID_TWICE: _l("Paid twice"),
        FlagKind.BOUGHT_TWICE: _l("Bought twice"),
        FlagKind.PAID_AFTER_END: _l("Renewed after it ended"),
        FlagKind.SECOND_TRANSACTION: _l("Second transaction"),
        FlagKind.COUPON_OVER_LIMIT: _l("Coupon past its limit"),
    },
)


#: What each payment provider is called on a page (the keys of the provider registry).
PROVIDER_LABELS = {
    "fake": _l("Test payments"),
    "stripe": _l("Stripe"),
    "wechatpay": _l("WeChat Pay"),
    #: payments.discounts.DISCOUNT_PROVIDER: the zero payment of an order a coupon made free
    "coupon": _l("Coupon (nothing to pay)"),
}


class InboxStatus(StrEnum):
    RECEIVED = "received"  #: stored, not yet processed
    PROCESSED = "processed"  #: verified and applied
    DUPLICATE = "duplicate"  #: verified; an earlier delivery of the same event was applied
    IGNORED = "ignored"  #: verified; an event we do not act on
    REJECTED = "rejected"  #: failed verification or did not match our records: no change
    FAILED = "failed"  #: our side failed while applying it; the provider retries, or replay


INBOX_STATUS_LABELS = enum_labels(
    InboxStatus,
    {
        InboxStatus.RECEIVED: lazy_pgettext("status", "Received"),
        InboxStatus.PROCESSED: lazy_pgettext("status", "Processed"),
        InboxStatus.DUPLICATE: lazy_pgettext("status", "Duplicate"),
        InboxStatus.IGNORED: lazy_pgettext("status", "Ignored"),
        InboxStatus.REJECTED: lazy_pgettext("status", "Rejected"),
        InboxStatus.FAILED: lazy_pgettext("status", "Failed"),
    },
)


class Order(db.Model):
    """What someone owes for one thing: an entry, a renewal, a course."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; names the order in URLs and to providers.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    #: Minor units of ``currency``: what is owed, after any discount.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: Whose sale it is, what it sells (its name when sold, for finance) and who buys it
    #: (once known: a prospect's order gets its member when they are admitted). Set by the
    #: package that sells; payments only carries them.
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    product: Mapped[str] = mapped_column(sa.String(80))
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: The price before a discount; ``amount`` when there is none.
    list_amount: Mapped[int]
    #: The discount code applied (one per order), see :mod:`payments.discounts`.
    coupon_code: Mapped[str | None] = mapped_column(sa.String(40))
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

    __table_args__ = (
        sa.CheckConstraint("amount >= 0 AND amount <= list_amount", name="amount_within_list"),
    )

    @property
    def price(self) -> Money:
        return Money(self.amount, self.currency)

    @property
    def discount(self) -> Money:
        return Money(self.list_amount - self.amount, self.currency)

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
    #: How the payer pays at the provider: ``cashier`` (fake), ``checkout`` (Stripe),
    #: ``jsapi``, ``mweb`` or ``native`` (WeChat Pay).
    method: Mapped[str] = mapped_column(sa.String(20), default="cashier")
    #: What the payer's next step needs (a QR code's content, JSAPI parameters, a URL),
    #: kept so that a reload does not ask the provider again. Never secrets.
    provider_data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    #: Made with its community's own account at the provider (see
    #: :mod:`payments.accounts`), not the install's: the keys that verify its
    #: notifications and make its refunds. A community that takes its own account while
    #: payments are waiting keeps those on the install's keys.
    own_account: Mapped[bool] = mapped_column(default=False, server_default=sa.false())

    order: Mapped[Order] = relationship(back_populates="payments")
    refunds: Mapped[list[Refund]] = relationship(back_populates="payment", order_by="Refund.id")
    disputes: Mapped[list[Dispute]] = relationship(back_populates="payment", order_by="Dispute.id")

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)

    def refunded_total(self) -> int:
        """Minor units refunded so far (succeeded refunds only)."""
        return sum(r.amount for r in self.refunds if r.status is RefundStatus.SUCCEEDED)

    def withheld_total(self) -> int:
        """Minor units taken back by disputes that are open or lost."""
        return sum(d.amount for d in self.disputes if d.status is not DisputeStatus.WON)

    def kept_total(self) -> int:
        """What we still hold of this payment: confirmed, less refunds and disputes."""
        if self.status is not PaymentStatus.CONFIRMED:
            return 0
        return self.amount - self.refunded_total() - self.withheld_total()

    def kept(self) -> Money:
        return Money(self.kept_total(), self.currency)

    @property
    def refundable(self) -> bool:
        """Whether some of it is ours to give back: not after a full refund, nor ever for
        the zero payment that settles an order a coupon made free."""
        return self.kept_total() > 0


class OrderFlag(db.Model):
    """Money that arrived but should not have, or not like this: shown to admins until one
    of them resolves it (usually by refunding the payment it names)."""

    __tablename__ = "order_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    #: The payment to look at (to refund, for a surplus), when there is one.
    payment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payments.id"))
    kind: Mapped[FlagKind] = mapped_column(enum_column(FlagKind, 20))
    #: What was seen, for the admin: ids and amounts, never secrets.
    detail: Mapped[str] = mapped_column(sa.String(300), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    resolved_by: Mapped[str | None] = mapped_column(sa.String(64))

    order: Mapped[Order] = relationship()
    payment: Mapped[Payment | None] = relationship()


class Refund(db.Model):
    """One attempt to give back some or all of a confirmed payment."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; our reference at the provider (WeChat's out_refund_no).
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[RefundStatus] = mapped_column(enum_column(RefundStatus))
    #: Why, as the admin gave it or the provider reported it.
    reason: Mapped[str] = mapped_column(sa.String(200), default="")
    #: A partial refund ends access only when the admin asked for it; a full one always.
    revoke_access: Mapped[bool] = mapped_column(default=False)
    #: ``staff:<id>``, or ``webhook:<provider>`` for refunds made at the provider.
    requested_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_reason: Mapped[str | None] = mapped_column(sa.String(200))

    payment: Mapped[Payment] = relationship(back_populates="refunds")

    __table_args__ = (sa.CheckConstraint("amount > 0", name="amount_positive"),)

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)


class Dispute(db.Model):
    """A chargeback: the payer's bank pulled a payment back pending a decision."""

    __tablename__ = "disputes"

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    #: The provider's id for the dispute.
    external_id: Mapped[str] = mapped_column(sa.String(128))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[DisputeStatus] = mapped_column(enum_column(DisputeStatus))
    reason: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    payment: Mapped[Payment] = relationship(back_populates="disputes")

    __table_args__ = (sa.UniqueConstraint("provider", "external_id"),)

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)


class ProviderReference(db.Model):
    """How a provider names one of our payments, or a refund of it: transaction id,
    checkout session, payment intent, refund id … Every external id maps through here."""

    __tablename__ = "provider_references"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    external_id: Mapped[str] = mapped_column(sa.String(128))
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    #: Set when the id names a refund of the payment.
    refund_id: Mapped[int | None] = mapped_column(sa.ForeignKey("refunds.id"))

    __table_args__ = (sa.UniqueConstraint("provider", "external_id"),)


class WebhookEvent(db.Model):
    """One delivery of a provider notification, stored raw before anything else happens."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    #: The community whose keys verify it, as its URL names it; None: the install's.
    community_id: Mapped[int | None] = mapped_column(sa.ForeignKey("communities.id"))
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

    #: By status: the few failed and unfinished deliveries are counted on every dashboard.
    __table_args__ = (sa.Index(None, "provider", "event_id"), sa.Index(None, "status"))


class LedgerEntry(db.Model):
    """One movement of money, appended in the transaction that moved it. Never changed."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: ``payment`` (in), ``refund`` (out), ``dispute`` (out, pending a decision),
    #: ``dispute_won`` (back in), ``fee`` (the provider's fee for the movement whose
    #: ``provider_transaction_id`` it repeats; learned from its statement).
    kind: Mapped[str] = mapped_column(sa.String(20))
    #: Signed minor units: money in is positive, money out negative.
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(sa.ForeignKey("refunds.id"))
    dispute_id: Mapped[int | None] = mapped_column(sa.ForeignKey("disputes.id"))
    provider: Mapped[str] = mapped_column(sa.String(20))
    #: The provider's transaction id, for reconciliation.
    provider_transaction_id: Mapped[str | None] = mapped_column(sa.String(128))
    #: On a ``payment`` entry: minor units the order's discount code took off its price.
    discount: Mapped[int] = mapped_column(default=0)
    coupon_code: Mapped[str | None] = mapped_column(sa.String(40))

    __table_args__ = (sa.Index(None, "provider", "provider_transaction_id"),)


class Reconciliation(db.Model):
    """One provider statement matched against the ledger (see :mod:`payments.reconciliation`)."""

    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(sa.String(20))
    filename: Mapped[str] = mapped_column(sa.String(200))
    #: The statement's days, in the provider's calendar; None for an empty statement.
    first_day: Mapped[date | None]
    last_day: Mapped[date | None]
    lines: Mapped[int]
    matched: Mapped[int]
    #: Lines missing on either side or differing in amount or fee.
    problems: Mapped[int]
    #: Fee entries this import added to the ledger.
    fees_recorded: Mapped[int]
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    imported_by: Mapped[str] = mapped_column(sa.String(64))


@event.listens_for(LedgerEntry, "before_update")
@event.listens_for(LedgerEntry, "before_delete")
def _ledger_is_append_only(_mapper, _connection, entry: LedgerEntry) -> None:
    raise RuntimeError(f"ledger entry {entry.id} is immutable: append a correcting entry")


class PaymentAccount(db.Model):
    """A community's own account at a provider (its WeChat Pay merchant, its Stripe
    account), used for its orders instead of the install's. Settings are kept by the
    install's setting names (``STRIPE_SECRET_KEY`` …): the plain ones in ``settings``,
    the secret ones sealed (:mod:`core.secrets`) in ``sealed``, with what a page may
    show of each in ``hints``. See :mod:`payments.accounts`."""

    __tablename__ = "payment_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"))
    #: ``wechatpay`` or ``stripe``.
    provider: Mapped[str] = mapped_column(sa.String(20))
    #: Plain settings by name: ids, serial numbers, public keys.
    settings: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    #: Secret settings by name, each a Fernet token; never shown, logged or audited.
    sealed: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    #: What a page may show of each sealed setting (``••••abcd``).
    hints: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(sa.String(64))

    __table_args__ = (sa.UniqueConstraint("community_id", "provider"),)
