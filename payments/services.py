"""The payment state machine. Functions here flush but never commit; the caller commits.

An order is paid when its confirmed payments cover its amount. Every change to a payment
locks its row and then its order's row, returns early when the change was made before,
appends the ledger entries and announces what the other packages must react to (see
:mod:`payments.signals`). Calls to providers happen outside these functions, between
commits, so no database lock is held while a provider answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from core import audit
from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects, insert_for, session_dialect
from core.events import record_event
from core.money import Money
from core.security import new_token
from payments.models import (
    Dispute,
    DisputeStatus,
    FlagKind,
    LedgerEntry,
    Order,
    OrderFlag,
    OrderStatus,
    Payment,
    PaymentStatus,
    ProviderReference,
    Refund,
    RefundStatus,
)
from payments.providers import (
    EventKind,
    Notification,
    Payer,
    PaymentProvider,
    PaymentStart,
    ProviderError,
    RefundResult,
    get_provider,
)
from payments.signals import access_restored, access_withdrawn, order_paid


class PaymentError(Exception):
    """A request about money that cannot be honoured; nothing was changed."""


class OrderClosed(PaymentError):
    """The order takes no new payment attempts (paid, or expired)."""


class PaymentMismatch(PaymentError):
    """A genuine notification that does not match our records (amount or currency):
    refused, nothing changes."""


class NotOurPayment(PaymentError):
    """A genuine notification about a payment we never made: another system's sale on the
    same merchant account, or one the provider says does not exist. Recorded and answered
    with success (a refusal would only make the provider deliver it again for days);
    nothing changes."""


def create_order(
    price: Money,
    description: str,
    *,
    community_id: int,
    product: str,
    member_id: int | None = None,
    actor: str,
    now: datetime | None = None,
) -> Order:
    """A new open order for ``price``, taking payment for ``ORDER_TTL_MINUTES``: a sale of
    ``product`` (its name) by the community, to the member when known."""
    now = now or utcnow()
    if price.amount <= 0:
        raise PaymentError("an order is for a positive amount")
    order = Order(
        public_id=new_token(16),
        amount=price.amount,
        list_amount=price.amount,
        community_id=community_id,
        product=product[:80],
        member_id=member_id,
        currency=price.currency,
        description=description[:120],
        status=OrderStatus.OPEN,
        created_at=now,
        expires_at=now + timedelta(minutes=current_app.config["ORDER_TTL_MINUTES"]),
    )
    db.session.add(order)
    audit.record("order.created", order, actor=actor, data={"amount": price.iso_str()}, now=now)
    return order


def start_payment(
    order: Order,
    provider_name: str,
    *,
    payer: Payer,
    return_url: str,
    cancel_url: str,
    actor: str,
    now: datetime | None = None,
) -> Payment:
    """The payment attempt for the whole of ``order`` through ``provider_name``.

    Asking again while an attempt by the same provider and method is still waiting gives
    that attempt back, so a double click never opens two payments. A new attempt is not yet
    registered with the provider: commit, then call :func:`register_with_provider`.
    """
    now = now or utcnow()
    provider = get_provider(provider_name, order.community_id)
    if provider is None:
        raise PaymentError(f"payment provider {provider_name!r} is not offered")
    if order.status in (OrderStatus.PAID, OrderStatus.REFUNDED):
        raise OrderClosed(_("This order is paid already"))
    if order.expires_at <= now:
        if order.status is OrderStatus.OPEN:
            order.status = OrderStatus.EXPIRED
            audit.record("order.expired", order, actor=actor, now=now)
        raise OrderClosed(_("This order has expired: please start again"))
    method = provider.method_for(payer)
    own_account = provider is not get_provider(provider_name)
    waiting = next(
        (
            p
            for p in order.payments
            if p.provider == provider_name
            and p.method == method
            and p.own_account == own_account
            and p.status is PaymentStatus.CREATED
        ),
        None,
    )
    if waiting is not None:
        return waiting
    payment = Payment(
        public_id=new_token(16),
        order=order,
        provider=provider_name,
        method=method,
        amount=order.amount,
        currency=order.currency,
        status=PaymentStatus.CREATED,
        return_url=return_url,
        cancel_url=cancel_url,
        provider_data={},
        created_at=now,
        own_account=own_account,
    )
    db.session.add(payment)
    audit.record(
        "payment.started",
        payment,
        actor=actor,
        data={"provider": provider_name, "method": method},
        now=now,
    )
    return payment


def register_with_provider(payment: Payment, payer: Payer, *, actor: str) -> str:
    """Where to send the payer for ``payment``: asks the provider the first time, and
    keeps its answer on the payment. Call between commits: the provider is called with
    no transaction open. Raises :class:`ProviderError`."""
    if payment.provider_data.get("url"):
        return payment.provider_data["url"]
    # The order is loaded now, read by the provider with no transaction open.
    provider = provider_of(payment)
    end_transaction_keeping_objects()
    try:
        start: PaymentStart = provider.start_payment(payment, payer)
    except ProviderError as error:
        locked = _lock_payment(payment.public_id)
        if locked.status is PaymentStatus.CREATED:
            locked.status = PaymentStatus.FAILED
            locked.failure_reason = str(error)[:200]
            audit.record("payment.start_failed", locked, actor=actor, data={"error": str(error)})
        db.session.commit()
        raise
    locked = _lock_payment(payment.public_id)
    locked.method = start.method
    locked.provider_data = {**start.provider_data, "url": start.url}
    for external_id in start.external_ids:
        map_reference(locked, external_id)
    db.session.commit()
    return start.url


@cache
def reference_mapping(dialect: str) -> sa.Insert:
    """The statement that maps a provider id to a payment (and refund), once: a second
    mapping of the same id changes nothing. Built once per dialect (the money path); its
    values are bound as ``provider``, ``external_id``, ``payment_id`` and ``refund_id``."""
    table = ProviderReference.__table__
    return (
        insert_for(dialect)(table)
        .values(
            provider=sa.bindparam("provider", type_=sa.String()),
            external_id=sa.bindparam("external_id", type_=sa.String()),
            payment_id=sa.bindparam("payment_id", type_=sa.Integer()),
            refund_id=sa.bindparam("refund_id", type_=sa.Integer()),
        )
        .on_conflict_do_nothing(index_elements=[table.c.provider, table.c.external_id])
    )


def map_reference(payment: Payment, external_id: str, refund: Refund | None = None) -> None:
    """Map a provider id to ``payment`` (and ``refund``), once. ``payment`` may be a row a
    Core statement read (its ``provider`` and ``id`` are all this reads)."""
    if refund is not None and refund.id is None:
        db.session.flush()
    db.session.connection().execute(
        reference_mapping(session_dialect()),
        {
            "provider": payment.provider,
            "external_id": external_id,
            "payment_id": payment.id,
            "refund_id": refund.id if refund else None,
        },
    )


#: Built once: every notification runs them.
_LOCK_PAYMENT = (
    sa.select(Payment)
    .where(Payment.public_id == sa.bindparam("public_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
#: The order, with its payments (the state machine reads them all): one statement. Only
#: the order's row is locked.
_LOCK_ORDER = (
    sa.select(Order)
    .where(Order.id == sa.bindparam("order_id"))
    .options(joinedload(Order.payments))
    .with_for_update(of=Order)
    .execution_options(populate_existing=True)
)


def _lock_payment(public_id: str | None) -> Payment | None:
    """The payment and its order, both locked for update until the transaction ends.

    Payment first, then order: every path takes them in this order, so two deliveries for
    the same order queue instead of deadlocking.
    """
    if public_id is None:
        return None
    payment = db.session.scalar(_LOCK_PAYMENT, {"public_id": public_id})
    if payment is None:
        return None
    order = db.session.execute(_LOCK_ORDER, {"order_id": payment.order_id}).unique().scalar_one()
    # Held by the payment, so the session's weak identity map keeps it loaded.
    set_committed_value(payment, "order", order)
    return payment


def provider_of(payment: Payment) -> PaymentProvider | None:
    """The provider with the keys ``payment`` was made with: its community's own account
    (:attr:`~payments.models.Payment.own_account`), else the install's. Its refunds,
    status queries and next steps go through them, whatever the community uses today.
    Raises :class:`ProviderError` when the community's secrets cannot be unsealed."""
    community_id = payment.order.community_id if payment.own_account else None
    return get_provider(payment.provider, community_id)


def identify_payment(
    notification: Notification, provider_name: str, community_id: int | None = None
) -> Notification:
    """``notification`` naming our payment: an event that names only the provider's id for
    it is looked up in the references table, else asked of the provider (with the keys of
    ``community_id``'s own account, which verified it; None: the install's). The provider is asked
    with no transaction open (what is pending is committed first: on SQLite an open
    transaction holds the write lock). Raises :class:`ProviderError`."""
    external_id = notification.payment_external_id
    if notification.payment_public_id is not None or not external_id:
        return notification
    public_id = db.session.scalar(
        sa.select(Payment.public_id)
        .join(ProviderReference, ProviderReference.payment_id == Payment.id)
        .where(
            ProviderReference.provider == provider_name,
            ProviderReference.external_id == external_id,
        )
    )
    if public_id is None:
        provider = get_provider(provider_name, community_id)
        end_transaction_keeping_objects()
        public_id = provider.lookup_payment_public_id(external_id)
    return replace(notification, payment_public_id=public_id)


def _resolve_payment(
    notification: Notification, provider_name: str, community_id: int | None, own_keys: bool
) -> Payment | None:
    """The payment an identified notification (see :func:`identify_payment`) is about,
    locked. Raises :class:`PaymentMismatch` when the keys that verified it are not the
    ones the payment was made with (see :func:`apply_notification`)."""
    payment = _lock_payment(notification.payment_public_id)
    if payment is None or payment.provider != provider_name:
        return None
    owner = payment.order.community_id
    if community_id is not None and community_id != owner:
        raise PaymentMismatch(f"the payment is community {owner}'s, not {community_id}'s")
    if own_keys != payment.own_account:
        made = "its community's own" if payment.own_account else "the install's"
        raise PaymentMismatch(
            f"the payment was made with {made} {provider_name} keys, not the ones that "
            "verified this"
        )
    return payment


def _check_money(reported: Money | None, expected: Money, what: str) -> None:
    if reported != expected:
        shown = f"{reported.amount} {reported.currency}" if reported else "nothing"
        raise PaymentMismatch(
            f"{what}: {shown} does not match our {expected.amount} {expected.currency}"
        )


def apply_notification(
    notification: Notification,
    provider_name: str,
    *,
    community_id: int | None = None,
    own_keys: bool | None = None,
    now: datetime | None = None,
) -> tuple[Payment | None, bool]:
    """Apply a verified notification that came to the URL of ``community_id`` (None: the
    install's), verified with that community's own keys (``own_keys``; None: whichever
    the community uses) or the install's. Returns the payment (None for an ignored
    event) and whether anything changed (False for a redelivery). Raises
    :class:`NotOurPayment` for a payment we never made, :class:`PaymentMismatch` when it
    does not match our records, is another community's, or was made with other keys
    than the ones that verified it."""
    now = now or utcnow()
    if notification.kind is EventKind.IGNORED:
        return None, False
    if own_keys is None:
        own_keys = community_id is not None and get_provider(
            provider_name, community_id
        ) is not get_provider(provider_name)
    # What it makes (a member, an invitation …) is flushed once, not once per audit entry.
    with audit.ids_at_commit():
        return _apply_notification(notification, provider_name, community_id, own_keys, now)


#: What applies a notification faster than :func:`apply_notification`, when the package
#: that reacts to the payment registered it (:func:`register_fast_path`): called with the
#: notification, the provider's name, the community whose URL it came to, whether its own
#: keys verified it and ``now``; it returns the payment's id having applied it, or None
#: having changed nothing (it is not the case it handles).
FastPath = Callable[[Notification, str, int | None, bool, datetime], int | None]
_FAST_PATHS: list[FastPath] = []


def register_fast_path(fast_path: FastPath) -> None:
    """Called once by the app, for the one common case a package above payments applies
    itself, by statements built once (see :mod:`membership.paid_join`)."""
    _FAST_PATHS[:] = [fast_path]


def apply_notification_fast(
    notification: Notification,
    provider_name: str,
    *,
    community_id: int | None,
    own_keys: bool,
    now: datetime,
) -> int | None:
    """Called by the inbox before :func:`apply_notification`: the id of the payment the
    registered fast path (if any, and unless ``PAID_JOIN_FAST_PATH`` is off) applied
    ``notification`` to, or None when it changed nothing and the notification takes the
    usual path."""
    if not _FAST_PATHS or not current_app.config.get("PAID_JOIN_FAST_PATH", True):
        return None
    return _FAST_PATHS[0](notification, provider_name, community_id, own_keys, now)


def _apply_notification(
    notification: Notification,
    provider_name: str,
    community_id: int | None,
    own_keys: bool,
    now: datetime,
) -> tuple[Payment, bool]:
    """:func:`apply_notification` of an event about a payment."""
    kind = notification.kind
    payment = _resolve_payment(notification, provider_name, community_id, own_keys)
    if payment is None:
        raise NotOurPayment("not one of our payments")
    actor = f"webhook:{provider_name}"
    if kind is EventKind.PAYMENT_SUCCEEDED:
        _check_money(notification.amount, payment.money, "amount paid")
        changed = confirm_payment(payment, notification.payment_external_id, actor=actor, now=now)
        return payment, changed
    if kind in (EventKind.PAYMENT_FAILED, EventKind.PAYMENT_CANCELLED, EventKind.PAYMENT_EXPIRED):
        return payment, _end_attempt(payment, kind, notification.reason, actor=actor, now=now)
    # Refunds and disputes happen only to money that moved: one arriving before the
    # payment's own event proves the payment succeeded.
    confirmed_now = False
    names_the_payment = kind in (EventKind.REFUND_SUCCEEDED, EventKind.REFUND_FAILED) and (
        notification.payment_amount is not None
    )
    if payment.status is not PaymentStatus.CONFIRMED or names_the_payment:
        # A refund names the whole payment it comes out of: ours, confirmed or not.
        _check_money(notification.payment_amount, payment.money, "payment amount")
        confirmed_now = confirm_payment(
            payment, notification.payment_external_id, actor=actor, now=now
        )
    if kind is EventKind.REFUND_SUCCEEDED:
        changed = _apply_refund(payment, notification, actor=actor, now=now)
    elif kind is EventKind.REFUND_FAILED:
        changed = _fail_refund(payment, notification, actor=actor, now=now)
    else:
        changed = _apply_dispute(payment, notification, actor=actor, now=now)
    return payment, changed or confirmed_now


def _end_attempt(
    payment: Payment, kind: EventKind, reason: str | None, *, actor: str, now: datetime
) -> bool:
    """A failure, cancel or expiry: only a waiting attempt can end this way. Money that
    was confirmed stays confirmed."""
    if payment.status is not PaymentStatus.CREATED:
        return False
    payment.status = {
        EventKind.PAYMENT_FAILED: PaymentStatus.FAILED,
        EventKind.PAYMENT_CANCELLED: PaymentStatus.CANCELLED,
        EventKind.PAYMENT_EXPIRED: PaymentStatus.EXPIRED,
    }[kind]
    payment.failure_reason = (reason or "")[:200] or None
    audit.record(f"payment.{payment.status}", payment, actor=actor, now=now)
    order = payment.order
    if order.status is OrderStatus.OPEN and order.expires_at <= now:
        order.status = OrderStatus.EXPIRED
        audit.record("order.expired", order, actor=actor, now=now)
    return True


def withdraw_order(order: Order, *, reason: str, actor: str, now: datetime) -> None:
    """An open order replaced by a new one before it was paid (its price moved on, or a
    coupon came for it while a payment attempt was open): it expires now. A payment
    that still arrives for it is money received, as for any expired order."""
    order.status = OrderStatus.EXPIRED
    order.expires_at = min(order.expires_at, now)
    audit.record("order.withdrawn", order, actor=actor, data={"reason": reason}, now=now)


def confirm_payment(
    payment: Payment, external_id: str | None, *, actor: str, now: datetime
) -> bool:
    """Record that ``payment``'s money moved. The caller holds the payment's row lock.

    Returns False when it was confirmed already, under the same provider id. A payment
    confirmed after it failed, was cancelled or its order expired is still money received:
    it counts. One that comes for an order paid already is kept and flagged for a refund;
    a second provider transaction for a confirmed payment is flagged, never swallowed.

    Every attempt is for the whole of its order (an order's price is fixed once an
    attempt exists), so the first confirmed attempt pays it.
    """
    if payment.status is PaymentStatus.CONFIRMED:
        return _second_transaction(payment, external_id, actor=actor, now=now)
    order = payment.order
    paid_before = order.status in (OrderStatus.PAID, OrderStatus.REFUNDED)
    pays_order = not paid_before and payment.amount >= order.amount
    if external_id:
        map_reference(payment, external_id)
    payment.status = PaymentStatus.CONFIRMED
    payment.confirmed_at = now
    _ledger(
        payment,
        "payment",
        payment.amount,
        now=now,
        transaction_id=external_id,
        # The discount is stated once, on the entry of the payment that settles the order.
        discount=order.discount.amount if pays_order else 0,
        coupon_code=order.coupon_code if pays_order else None,
    )
    audit.record(
        "payment.confirmed", payment, actor=actor, data={"amount": payment.money.iso_str()}, now=now
    )
    record_event(
        order.community_id,
        "payment.confirmed",
        {
            "payment": payment.public_id,
            "order": order.public_id,
            "amount": payment.amount,
            "currency": payment.currency,
        },
        now=now,
    )
    if paid_before:
        # Paid twice: the money is kept in the ledger and put before admins for a refund.
        audit.record("order.paid_again", order, actor=actor, data={"payment": payment.id}, now=now)
        flag_order(
            order,
            FlagKind.PAID_TWICE,
            payment=payment,
            detail=f"{payment.money} · {payment.provider} {external_id or ''}".strip(),
            actor=actor,
            now=now,
        )
        return True
    if pays_order:
        order.status = OrderStatus.PAID
        order.paid_at = now
        audit.record("order.paid", order, actor=actor, now=now)
        order_paid.send(order, now=now)
    return True


def _second_transaction(
    payment: Payment, external_id: str | None, *, actor: str, now: datetime
) -> bool:
    """A confirmation of a confirmed payment: a redelivery (False), or the provider naming
    another transaction for it (money may have moved twice: flagged, True)."""
    known = _transaction_id(payment)
    if not external_id or not known or external_id == known:
        return False
    audit.record(
        "payment.second_transaction",
        payment,
        actor=actor,
        data={"known": known, "reported": external_id},
        now=now,
    )
    return flag_order(
        payment.order,
        FlagKind.SECOND_TRANSACTION,
        payment=payment,
        detail=f"{payment.provider}: {known} · {external_id}",
        actor=actor,
        now=now,
    )


def flag_order(
    order: Order,
    kind: FlagKind,
    *,
    payment: Payment | None = None,
    detail: str = "",
    actor: str,
    now: datetime,
) -> bool:
    """Put ``order`` before the admins (flushed; audited). Once per kind and payment
    while unresolved. Returns whether a flag was added."""
    known = db.session.scalar(
        sa.select(OrderFlag.id).where(
            OrderFlag.order_id == order.id,
            OrderFlag.kind == kind,
            OrderFlag.payment_id.is_(None)
            if payment is None
            else OrderFlag.payment_id == payment.id,
            OrderFlag.resolved_at.is_(None),
        )
    )
    if known is not None:
        return False
    flag = OrderFlag(order=order, payment=payment, kind=kind, detail=detail[:300], created_at=now)
    db.session.add(flag)
    audit.record(
        "order.flagged",
        order,
        actor=actor,
        data={"kind": kind.value, "payment": payment.id if payment else None, "detail": detail},
        now=now,
    )
    return True


def open_flags(order: Order) -> set[FlagKind]:
    """What about ``order`` still waits for an admin."""
    return set(
        db.session.scalars(
            sa.select(OrderFlag.kind).where(
                OrderFlag.order_id == order.id, OrderFlag.resolved_at.is_(None)
            )
        )
    )


def resolve_flag(flag: OrderFlag, *, actor: str, now: datetime | None = None) -> bool:
    """An admin dealt with ``flag``. Returns False when it was resolved before."""
    if flag.resolved_at is not None:
        return False
    flag.resolved_at = now or utcnow()
    flag.resolved_by = actor
    audit.record(
        "order.flag_resolved", flag.order, actor=actor, data={"flag": flag.id}, now=flag.resolved_at
    )
    return True


def standing(payment: Payment) -> bool:
    """Whether ``payment`` still pays for its order: confirmed, not wholly refunded, and
    not taken back by a chargeback that is open or was lost. A partial refund leaves it
    standing (a goodwill refund is not the end of a membership)."""
    if payment.status is not PaymentStatus.CONFIRMED:
        return False
    refunded_whole = payment.amount > 0 and payment.refunded_total() >= payment.amount
    return not refunded_whole and all(d.status is DisputeStatus.WON for d in payment.disputes)


def covered(order: Order) -> bool:
    """Whether the order's standing payments still cover its amount: what it bought lasts
    as long as this holds (unless an admin ends it with a partial refund)."""
    return sum(p.amount for p in order.payments if standing(p)) >= order.amount


def surplus_payments(order: Order) -> list[Payment]:
    """Standing payments beyond what the order needs, in the order they were confirmed:
    the ones to refund when an order was paid twice."""
    needed, surplus = order.amount, []
    for payment in sorted(
        (p for p in order.payments if standing(p)), key=lambda p: (p.confirmed_at, p.id)
    ):
        if needed > 0:
            needed -= payment.amount
        elif payment.amount:  # the zero payment of a free order is never more than it
            surplus.append(payment)
    return surplus


def _money_went_back(order: Order, *, actor: str, now: datetime) -> None:
    """After a refund or a chargeback: a paid order whose standing payments no longer
    cover it, with no chargeback still open, is refunded."""
    if order.status is not OrderStatus.PAID or covered(order):
        return
    if any(d.status is DisputeStatus.OPEN for p in order.payments for d in p.disputes):
        return
    order.status = OrderStatus.REFUNDED
    audit.record("order.refunded", order, actor=actor, now=now)


def _ledger(
    payment: Payment,
    kind: str,
    amount: int,
    *,
    now: datetime,
    transaction_id: str | None = None,
    refund: Refund | None = None,
    dispute: Dispute | None = None,
    discount: int = 0,
    coupon_code: str | None = None,
) -> None:
    db.session.add(
        LedgerEntry(
            created_at=now,
            kind=kind,
            amount=amount,
            currency=payment.currency,
            order_id=payment.order_id,
            payment_id=payment.id,
            refund_id=refund.id if refund else None,
            dispute_id=dispute.id if dispute else None,
            provider=payment.provider,
            provider_transaction_id=transaction_id,
            discount=discount,
            coupon_code=coupon_code,
        )
    )


# Refunds -------------------------------------------------------------------------------


def request_refund(
    payment: Payment,
    amount: Money,
    *,
    reason: str,
    revoke_access: bool,
    actor: str,
    now: datetime | None = None,
) -> Refund:
    """A refund of ``amount`` of a confirmed payment, to be asked of the provider after
    the commit (see :func:`send_refund`). Raises :class:`PaymentError` if the payment
    cannot give that much back."""
    now = now or utcnow()
    payment = _lock_payment(payment.public_id)
    if payment.status is not PaymentStatus.CONFIRMED:
        raise PaymentError(_("Only confirmed payments can be refunded"))
    if amount.currency != payment.currency or amount.amount <= 0:
        raise PaymentError(_("Not a valid refund amount"))
    pending = sum(r.amount for r in payment.refunds if r.status is RefundStatus.REQUESTED)
    if amount.amount > payment.kept_total() - pending:
        raise PaymentError(
            _(
                "More than is left to refund: at most %(left)s",
                left=Money(payment.kept_total() - pending, payment.currency),
            )
        )
    refund = Refund(
        public_id=new_token(16),
        payment=payment,
        amount=amount.amount,
        currency=amount.currency,
        status=RefundStatus.REQUESTED,
        reason=reason[:200],
        revoke_access=revoke_access,
        requested_by=actor,
        created_at=now,
    )
    db.session.add(refund)
    audit.record(
        "refund.requested",
        refund,
        actor=actor,
        data={"amount": amount.iso_str(), "payment": payment.id, "revoke_access": revoke_access},
        now=now,
    )
    return refund


def send_refund(refund: Refund, *, actor: str, now: datetime | None = None) -> Refund:
    """Ask the provider for a requested refund and record its first answer. Commits
    before calling the provider and after."""
    now = now or utcnow()
    transaction_id = _transaction_id(refund.payment)
    provider = provider_of(refund.payment)
    end_transaction_keeping_objects()
    try:
        if provider is None:
            raise ProviderError(f"payment provider {refund.payment.provider!r} is not enabled")
        result = provider.request_refund(refund, transaction_id)
    except ProviderError as error:
        result = RefundResult(external_id=None, succeeded=False, reason=str(error))
    payment = _lock_payment(refund.payment.public_id)
    refund = db.session.get(Refund, refund.id)
    if result.external_id:
        map_reference(payment, result.external_id, refund)
    if refund.status is RefundStatus.REQUESTED:
        if result.succeeded:
            _succeed_refund(refund, result.external_id, actor=actor, now=now)
        elif result.succeeded is False:
            refund.status = RefundStatus.FAILED
            refund.failure_reason = (result.reason or "")[:200] or None
            refund.completed_at = now
            audit.record("refund.failed", refund, actor=actor, data={"reason": result.reason})
    db.session.commit()
    return refund


def _transaction_id(payment: Payment) -> str | None:
    """The provider's id for the confirmed payment, as the ledger recorded it."""
    return db.session.scalar(
        sa.select(LedgerEntry.provider_transaction_id).where(
            LedgerEntry.payment_id == payment.id, LedgerEntry.kind == "payment"
        )
    )


def _find_refund(payment: Payment, notification: Notification) -> Refund | None:
    for refund in payment.refunds:
        if notification.refund_public_id and refund.public_id == notification.refund_public_id:
            return refund
    if notification.refund_external_id:
        refund_id = db.session.scalar(
            sa.select(ProviderReference.refund_id).where(
                ProviderReference.provider == payment.provider,
                ProviderReference.external_id == notification.refund_external_id,
            )
        )
        return db.session.get(Refund, refund_id) if refund_id else None
    return None


def _apply_refund(
    payment: Payment, notification: Notification, *, actor: str, now: datetime
) -> bool:
    """Record refunds the provider reports as done: one refund, or a running total."""
    if notification.refunded_total is not None:
        total = notification.refunded_total
        if total.currency != payment.currency or total.amount > payment.amount:
            raise PaymentMismatch(f"refunded total {total.amount} {total.currency}")
        missing = total.amount - payment.refunded_total()
        if missing <= 0:
            return False
        for refund in payment.refunds:
            if refund.status is RefundStatus.REQUESTED and refund.amount <= missing:
                _succeed_refund(refund, None, actor=actor, now=now)
                missing -= refund.amount
        if missing > 0:
            _succeed_refund(
                _refund_made_at_provider(payment, missing, actor=actor, now=now),
                notification.refund_external_id,
                actor=actor,
                now=now,
            )
        return True
    refund = _find_refund(payment, notification)
    if refund is None:
        if notification.amount is None:
            raise PaymentMismatch("refund without an amount")
        refund = _refund_made_at_provider(payment, notification.amount.amount, actor=actor, now=now)
    if refund.status is RefundStatus.SUCCEEDED:
        return False
    _check_money(notification.amount, refund.money, "refund amount")
    if payment.refunded_total() + refund.amount > payment.amount:
        raise PaymentMismatch("refunds would exceed the payment")
    _succeed_refund(refund, notification.refund_external_id, actor=actor, now=now)
    return True


def _refund_made_at_provider(payment: Payment, amount: int, *, actor: str, now: datetime) -> Refund:
    """A refund we learn of from the provider (made in its dashboard)."""
    refund = Refund(
        public_id=new_token(16),
        payment=payment,
        amount=amount,
        currency=payment.currency,
        status=RefundStatus.REQUESTED,
        reason=_("Made at the provider"),
        revoke_access=False,
        requested_by=actor,
        created_at=now,
    )
    db.session.add(refund)
    db.session.flush()
    return refund


def _succeed_refund(refund: Refund, external_id: str | None, *, actor: str, now: datetime) -> None:
    """The money went back: ledger entry, audit, and access withdrawn when the order's
    standing payments no longer cover it (see :func:`covered`) or the admin asked for it."""
    payment = refund.payment
    refund.status = RefundStatus.SUCCEEDED
    refund.completed_at = now
    db.session.flush()
    if external_id:
        map_reference(payment, external_id, refund)
    _ledger(payment, "refund", -refund.amount, now=now, transaction_id=external_id, refund=refund)
    audit.record(
        "refund.succeeded", refund, actor=actor, data={"amount": refund.money.iso_str()}, now=now
    )
    record_event(
        payment.order.community_id,
        "payment.refunded",
        {
            "refund": refund.public_id,
            "payment": payment.public_id,
            "order": payment.order.public_id,
            "amount": refund.amount,
            "currency": refund.currency,
        },
        now=now,
    )
    order = payment.order
    _money_went_back(order, actor=actor, now=now)
    if refund.revoke_access or not covered(order):
        access_withdrawn.send(order, now=now, reason="refunded")


def _fail_refund(
    payment: Payment, notification: Notification, *, actor: str, now: datetime
) -> bool:
    refund = _find_refund(payment, notification)
    if refund is None or refund.status is not RefundStatus.REQUESTED:
        return False
    refund.status = RefundStatus.FAILED
    refund.completed_at = now
    refund.failure_reason = (notification.reason or "")[:200] or None
    audit.record(
        "refund.failed", refund, actor=actor, data={"reason": notification.reason}, now=now
    )
    return True


# Disputes ------------------------------------------------------------------------------


def _apply_dispute(
    payment: Payment, notification: Notification, *, actor: str, now: datetime
) -> bool:
    """Open or close a chargeback. Events may come in any order: a dispute first heard of
    as won or lost is recorded as such, and a late "opened" then changes nothing."""
    if notification.amount is None or notification.amount.currency != payment.currency:
        raise PaymentMismatch("dispute amount")
    if not notification.dispute_external_id:
        raise PaymentMismatch("dispute without an id")
    dispute = db.session.scalar(
        sa.select(Dispute).where(
            Dispute.provider == payment.provider,
            Dispute.external_id == notification.dispute_external_id,
        )
    )
    status = {
        EventKind.DISPUTE_OPENED: DisputeStatus.OPEN,
        EventKind.DISPUTE_WON: DisputeStatus.WON,
        EventKind.DISPUTE_LOST: DisputeStatus.LOST,
    }[notification.kind]
    order = payment.order
    if dispute is None:
        dispute = Dispute(
            payment=payment,
            provider=payment.provider,
            external_id=notification.dispute_external_id,
            amount=notification.amount.amount,
            currency=payment.currency,
            status=status,
            reason=(notification.reason or "")[:200],
            created_at=now,
            closed_at=None if status is DisputeStatus.OPEN else now,
        )
        db.session.add(dispute)
        db.session.flush()
        audit.record(f"dispute.{status}", dispute, actor=actor, now=now)
        _dispute_event(dispute, order, now=now)
        if status is not DisputeStatus.WON:
            _ledger(payment, "dispute", -dispute.amount, now=now, dispute=dispute)
            _money_went_back(order, actor=actor, now=now)
            if not covered(order):
                access_withdrawn.send(
                    order,
                    now=now,
                    reason="disputed" if status is DisputeStatus.OPEN else "dispute_lost",
                )
        return True
    if dispute.status is not DisputeStatus.OPEN or status is DisputeStatus.OPEN:
        return False
    dispute.status = status
    dispute.closed_at = now
    audit.record(f"dispute.{status}", dispute, actor=actor, now=now)
    _dispute_event(dispute, order, now=now)
    if status is DisputeStatus.WON:
        _ledger(payment, "dispute_won", dispute.amount, now=now, dispute=dispute)
        if covered(order):
            access_restored.send(order, now=now)
    else:
        _money_went_back(order, actor=actor, now=now)
        if not covered(order):
            access_withdrawn.send(order, now=now, reason="dispute_lost")
    return True


def _dispute_event(dispute: Dispute, order: Order, *, now: datetime) -> None:
    """The event for the operator's tools: a chargeback opened, or decided."""
    record_event(
        order.community_id,
        "dispute.opened" if dispute.status is DisputeStatus.OPEN else "dispute.closed",
        {
            "dispute": dispute.id,
            "payment": dispute.payment.public_id,
            "order": order.public_id,
            "status": dispute.status.value,
            "amount": dispute.amount,
            "currency": dispute.currency,
        },
        now=now,
    )


# Payments that were never notified -------------------------------------------------------


def settle_from_provider(payment: Payment, *, now: datetime | None = None) -> bool:
    """Ask the provider about a waiting payment and apply its answer; close it at the
    provider when its order expired unpaid. Commits. Returns whether anything changed."""
    now = now or utcnow()
    community_id = payment.order.community_id
    provider = provider_of(payment)
    if provider is None or payment.status is not PaymentStatus.CREATED:
        return False
    expired = payment.order.expires_at <= now
    end_transaction_keeping_objects()
    answer = provider.query_payment(payment, now=now)
    if answer is None and expired:
        provider.close_payment(payment)
        answer = Notification(
            event_id=f"closed:{payment.public_id}",
            kind=EventKind.PAYMENT_EXPIRED,
            payment_public_id=payment.public_id,
            reason=_("Not paid in time"),
        )
    if answer is None:
        return False
    _payment, changed = apply_notification(
        answer, payment.provider, community_id=community_id, own_keys=payment.own_account, now=now
    )
    db.session.commit()
    return changed
