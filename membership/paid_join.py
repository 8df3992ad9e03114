"""The commonest delivery, applied by statements built once: a verified "paid" notification
for the open order of a join application, which admits the payer as a new member.

:func:`payments.services.apply_notification` and the ``order_paid`` receivers do the same
through the ORM, for every case; their unit of work (one flush of nine kinds of rows) and
the building of each statement cost more than everything else a delivery does. Here the
same rows are written by prebuilt Core statements, in the order and under the locks the ORM
path takes them (payment, order, the community's row, the tier's groups): the
payment confirmed, its provider id mapped, its ledger entry, the order paid and bought by
the new member, numbered; their membership, invitation (with its platform task and seat)
and application admitted; the audit entries, events and daily figures the ORM path would
have written or tallied.

It stands in for the ``order_paid`` receivers, which it does not call: this package's
admission, and those of :mod:`perks`, which have nothing to do for such an order (no coupon
was used; an order that pays for an application pays for no course). A receiver added to
``order_paid`` must be added here too, or the case it acts on left to the ORM path.

Only that case: anything else (another event, a payment confirmed or failed before, an
order paid before, with a coupon or more than one payment, a renewal, a screened tier, a
returning or known member, another community's keys, an amount that does not match, no
application) is left to the ORM path, before anything is written.
``tests/test_paid_join.py`` runs the same deliveries both ways and compares every row.

On PostgreSQL the writes are joined into two statements of data-modifying CTEs, which read
the new rows' ids from one another: the payment's, the member's and those that name the
member (once its number is drawn); the invitation's, its task's and its seat's (once its
group is chosen among those locked). A statement costs more there (its round trip and the
driver's handling) than on SQLite, where every write is one of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.sql import visitors

from core import audit
from core.db import db
from core.events import record_event
from core.money import Money
from core.security import new_token
from membership.figures import count_paid_admission
from membership.live_codes import choose_group, tell_expired
from membership.models import (
    SENDABLE_CONTACTS,
    Application,
    ApplicationStatus,
    Group,
    Invitation,
    InvitationStatus,
    Member,
    Membership,
    MembershipStatus,
    PlatformTask,
    TaskAction,
    TaskStatus,
    TierKind,
    tier_groups,
)
from membership.services import (
    _keep_loaded_in_step,
    allocate_member_number,
    give_back_member_number,
)
from payments.models import LedgerEntry, Order, OrderStatus, Payment, PaymentStatus
from payments.providers import EventKind, Notification
from payments.services import reference_mapping

_PAYMENTS = Payment.__table__
_ORDERS = Order.__table__
_APPLICATIONS = Application.__table__
_MEMBERS = Member.__table__
_GROUPS = Group.__table__

#: The payment, locked first (as every path locks it).
_LOCK_PAYMENT = (
    sa.select(
        _PAYMENTS.c.id,
        _PAYMENTS.c.order_id,
        _PAYMENTS.c.provider,
        _PAYMENTS.c.own_account,
        _PAYMENTS.c.status,
        _PAYMENTS.c.amount,
        _PAYMENTS.c.currency,
        _PAYMENTS.c.provider_data,
        _PAYMENTS.c.public_id,
    )
    .where(_PAYMENTS.c.public_id == sa.bindparam("public_id"))
    .with_for_update()
)


def _member_where(*conditions) -> sa.ScalarSelect:
    return (
        sa.select(_MEMBERS.c.id)
        .where(_MEMBERS.c.community_id == _APPLICATIONS.c.community_id, *conditions)
        .limit(1)
        .scalar_subquery()
    )


#: The members the applicant might be already: by the contact typed; by the openid WeChat
#: gave, or the one the payment was made with.
_MEMBER_BY_CONTACT = _member_where(
    _MEMBERS.c.contact_kind == _APPLICATIONS.c.contact_kind,
    _MEMBERS.c.contact_value == _APPLICATIONS.c.contact_value,
).label("member_by_contact")
_MEMBER_BY_OPENID = _member_where(
    _MEMBERS.c.wechat_openid
    == sa.func.coalesce(_APPLICATIONS.c.wechat_openid, sa.bindparam("payment_openid"))
).label("member_by_openid")
#: The same, read again under the community's lock (see :func:`apply_paid_join`).
_APPLICANT_MEMBERS = sa.select(_MEMBER_BY_CONTACT, _MEMBER_BY_OPENID).where(
    _APPLICATIONS.c.id == sa.bindparam("application_id")
)
_TIERS = Application.tier.property.mapper.local_table
#: The order, locked second, with what admitting its payer reads: its application and
#: tier, how many payments it has, and the members the applicant might be already.
_LOCK_ORDER = (
    sa.select(
        _ORDERS.c.status.label("order_status"),
        _ORDERS.c.amount,
        _ORDERS.c.list_amount,
        _ORDERS.c.community_id,
        _ORDERS.c.coupon_code,
        _ORDERS.c.public_id,
        _APPLICATIONS.c.id.label("application_id"),
        _APPLICATIONS.c.status.label("application_status"),
        _APPLICATIONS.c.renews_membership_id,
        _APPLICATIONS.c.member_id,
        _APPLICATIONS.c.display_name,
        _APPLICATIONS.c.contact_kind,
        _APPLICATIONS.c.contact_value,
        _APPLICATIONS.c.wechat_id,
        _APPLICATIONS.c.wechat_openid,
        _APPLICATIONS.c.contact_proven_at,
        _APPLICATIONS.c.created_at.label("applied_at"),
        _TIERS.c.id.label("tier_id"),
        _TIERS.c.kind,
        _TIERS.c.code,
        _TIERS.c.duration_days,
        _TIERS.c.requires_screening,
        sa.select(sa.func.count())
        .where(_PAYMENTS.c.order_id == _ORDERS.c.id)
        .scalar_subquery()
        .label("payments"),
        _MEMBER_BY_CONTACT,
        _MEMBER_BY_OPENID,
    )
    .select_from(
        _ORDERS.join(_APPLICATIONS, _APPLICATIONS.c.order_id == _ORDERS.c.id).join(
            _TIERS, _TIERS.c.id == _APPLICATIONS.c.tier_id
        )
    )
    .where(_ORDERS.c.id == sa.bindparam("order_id"))
    .with_for_update(of=_ORDERS)
)
#: The tier's groups, locked last, in id order (as :func:`membership.services.issue_invitation`
#: locks them).
_LOCK_GROUPS = (
    sa.select(
        _GROUPS.c.id,
        _GROUPS.c.name,
        _GROUPS.c.platform,
        _GROUPS.c.capacity,
        _GROUPS.c.qr_mime,
        _GROUPS.c.qr_expires_at,
        _GROUPS.c.seats_taken,
    )
    .join(tier_groups, tier_groups.c.group_id == _GROUPS.c.id)
    .where(tier_groups.c.tier_id == sa.bindparam("tier_id"))
    .order_by(_GROUPS.c.id)
    .with_for_update(of=_GROUPS)
)
#: The admission's writes, their values bound by name: made one by one on SQLite, and on
#: PostgreSQL in two statements (see :func:`_admission_at_once` and :data:`_SEAT_AT_ONCE`).
_CONFIRM_PAYMENT = (
    _PAYMENTS.update()
    .where(_PAYMENTS.c.id == sa.bindparam("payment_id"))
    .values(status=PaymentStatus.CONFIRMED, confirmed_at=sa.bindparam("now"))
)
_INSERT_LEDGER = LedgerEntry.__table__.insert().values(
    created_at=sa.bindparam("now"),
    kind="payment",
    amount=sa.bindparam("amount"),
    currency=sa.bindparam("currency"),
    order_id=sa.bindparam("order_id"),
    payment_id=sa.bindparam("payment_id"),
    provider=sa.bindparam("provider"),
    provider_transaction_id=sa.bindparam("external_id"),
    discount=sa.bindparam("discount"),
    coupon_code=None,
)
_INSERT_MEMBER = _MEMBERS.insert().values(
    community_id=sa.bindparam("community_id"),
    display_name=sa.bindparam("display_name"),
    contact_kind=sa.bindparam("contact_kind"),
    contact_value=sa.bindparam("contact_value"),
    wechat_id=sa.bindparam("wechat_id"),
    contact_proven_at=sa.bindparam("contact_proven_at"),
    wechat_openid=sa.bindparam("wechat_openid"),
    created_at=sa.bindparam("now"),
    number=sa.bindparam("number"),
    number_label=sa.bindparam("number_label"),
    # Given here: SQLAlchemy fills in a column's Python default in a statement of its own,
    # not in one nested in a CTE.
    credential_version=_MEMBERS.c.credential_version.default.arg,
)
_MEMBERSHIPS = Membership.__table__
_INSERT_MEMBERSHIP = _MEMBERSHIPS.insert().values(
    member_id=sa.bindparam("member_id"),
    tier_id=sa.bindparam("tier_id"),
    status=MembershipStatus.ACTIVE,
    starts_at=sa.bindparam("now"),
    ends_at=sa.bindparam("ends_at"),
    order_id=sa.bindparam("order_id"),
)
_ADMIT_APPLICATION = (
    _APPLICATIONS.update()
    .where(_APPLICATIONS.c.id == sa.bindparam("application_id"))
    .values(status=ApplicationStatus.ADMITTED, member_id=sa.bindparam("member_id"))
)
_PAY_ORDER = (
    _ORDERS.update()
    .where(_ORDERS.c.id == sa.bindparam("order_id"))
    .values(
        status=OrderStatus.PAID, paid_at=sa.bindparam("now"), member_id=sa.bindparam("member_id")
    )
)
_INVITATIONS = Invitation.__table__
_INSERT_INVITATION = _INVITATIONS.insert().values(
    token=sa.bindparam("token"),
    member_id=sa.bindparam("member_id"),
    membership_id=sa.bindparam("membership_id"),
    group_id=sa.bindparam("group_id"),
    status=sa.bindparam("status"),
    created_at=sa.bindparam("now"),
    issued_at=sa.bindparam("issued_at"),
)
_INSERT_TASK = PlatformTask.__table__.insert().values(
    invitation_id=sa.bindparam("invitation_id"),
    action=TaskAction.GRANT,
    status=TaskStatus.PENDING,
    attempts=0,
    next_attempt_at=sa.bindparam("now"),
    created_at=sa.bindparam("now"),
)
_TAKE_SEAT = (
    _GROUPS.update()
    .where(_GROUPS.c.id == sa.bindparam("group_id"))
    .values(seats_taken=_GROUPS.c.seats_taken + 1)
    .returning(_GROUPS.c.seats_taken)
)


def _apart(statement: sa.Executable, **read: sa.ColumnElement) -> sa.Executable:
    """``statement`` for :func:`_at_once`: each value it binds by name bound as
    ``_<name>`` instead, a name no column has, except those ``read`` gives, by name, as
    SQL (the id of a row inserted by the same statement). Executed with a value named
    like a column of a table it writes, SQLAlchemy writes that column too (it adds it to
    an INSERT's or an UPDATE's values), in statements nested in a CTE as well: a statement
    that writes several tables names its values apart from all their columns."""

    def renamed(element):
        if isinstance(element, sa.BindParameter) and not element.unique:
            if element.key in read:
                return read[element.key]
            return sa.bindparam(f"_{element.key}", type_=element.type)
        return None

    return visitors.replacement_traverse(statement, {}, renamed)


def _at_once(values: dict) -> dict:
    """``values`` by the names the statements of :func:`_apart` bind them."""
    return {f"_{name}": value for name, value in values.items()}


def _inserted(cte: sa.CTE) -> sa.ScalarSelect:
    """The id of the row the INSERT ``cte`` (of one row, returning its id) inserts."""
    return sa.select(cte.c.id).scalar_subquery()


@cache
def _admission_at_once(referenced: bool) -> sa.Select:
    """PostgreSQL: the writes :func:`_write_admission` makes one by one on SQLite, in one
    statement of data-modifying CTEs, which read the new member's id from its INSERT; it
    answers the member's and the membership's ids. The payment's provider id is mapped
    when ``referenced``."""
    member = _apart(_INSERT_MEMBER.returning(_MEMBERS.c.id)).cte("new_member")
    membership = _apart(
        _INSERT_MEMBERSHIP.returning(_MEMBERSHIPS.c.member_id, _MEMBERSHIPS.c.id),
        member_id=_inserted(member),
    ).cte("new_membership")
    writes = [_CONFIRM_PAYMENT, _INSERT_LEDGER]
    if referenced:
        writes.append(reference_mapping("postgresql"))
    writes += [_ADMIT_APPLICATION, _PAY_ORDER]
    ctes = [
        _apart(write, member_id=_inserted(member)).cte(f"write_{i}")
        for i, write in enumerate(writes)
    ]
    return sa.select(membership.c.member_id, membership.c.id).add_cte(*ctes)


_NEW_INVITATION = _apart(_INSERT_INVITATION.returning(_INVITATIONS.c.id)).cte("new_invitation")
_TAKEN_SEAT = _apart(_TAKE_SEAT).cte("seat")
#: PostgreSQL: an invitation to a group, its grant queued and its seat taken, in one
#: statement (see :func:`_apart`); it answers the invitation's id and the seats the group
#: has taken now.
_SEAT_AT_ONCE = (
    sa.select(_NEW_INVITATION.c.id, _TAKEN_SEAT.c.seats_taken)
    .join_from(_NEW_INVITATION, _TAKEN_SEAT, sa.true())
    .add_cte(_apart(_INSERT_TASK, invitation_id=_inserted(_NEW_INVITATION)).cte("new_task"))
)


@dataclass(slots=True)
class _GroupRow:
    """A locked group as :func:`~membership.live_codes.choose_group` reads it."""

    id: int
    name: str
    platform: str
    capacity: int
    qr_mime: str | None
    qr_expires_at: datetime | None
    seats_taken: int

    qr_valid = Group.qr_valid


def apply_paid_join(
    notification: Notification,
    provider_name: str,
    community_id: int | None,
    own_keys: bool,
    now: datetime,
) -> int | None:
    """Registered with :func:`payments.services.register_fast_path`; called by the inbox
    for a verified notification not applied before. When it is a payment of the open
    order of a new member's join (see the module's docstring), confirm it and admit the
    payer; returns the payment's id. Otherwise returns None, having written nothing (it
    may have locked the payment, its order and its community's row, as the usual path does
    next, and drawn a member number and given it back)."""
    if notification.kind is not EventKind.PAYMENT_SUCCEEDED or not notification.payment_public_id:
        return None
    connection = db.session.connection()
    payment = connection.execute(
        _LOCK_PAYMENT, {"public_id": notification.payment_public_id}
    ).first()
    if payment is None or not _payment_waits(payment, notification, provider_name, own_keys):
        return None
    openid = (payment.provider_data or {}).get("openid")
    join = connection.execute(
        _LOCK_ORDER, {"order_id": payment.order_id, "payment_openid": openid}
    ).first()
    if join is None or not _join_waits(join, payment, community_id):
        return None
    # The draw locks the community's row (as hold_admissions does on the ORM path).
    number = allocate_member_number(join.community_id)
    if connection.dialect.name == "postgresql":
        # Read again under that lock: the same person's other order, paid at this moment,
        # may have made them a member since the order was read.
        members = connection.execute(
            _APPLICANT_MEMBERS, {"application_id": join.application_id, "payment_openid": openid}
        ).one()
        if _claimed(join, members) is not None:
            give_back_member_number(join.community_id)
            return None
    _admit(connection, payment, join, number, openid, notification.payment_external_id, now)
    return payment.id


def _payment_waits(
    payment: Row, notification: Notification, provider_name: str, own_keys: bool
) -> bool:
    """Whether the notification confirms ``payment``, waiting, with the keys it was made
    with and for its amount."""
    return (
        payment.provider == provider_name
        and payment.status is PaymentStatus.CREATED
        and payment.own_account == own_keys
        and notification.amount == Money(payment.amount, payment.currency)
    )


def _join_waits(join: Row, payment: Row, community_id: int | None) -> bool:
    """Whether the order is open, paid whole by its one payment, with no coupon, for a
    new applicant's paid, unscreened tier (nobody's renewal), in the community whose URL
    the notification came to."""
    return (
        (community_id is None or community_id == join.community_id)
        and join.order_status is OrderStatus.OPEN
        and payment.amount >= join.amount
        and join.coupon_code is None
        and join.payments == 1
        and join.application_status is ApplicationStatus.AWAITING_PAYMENT
        and join.renews_membership_id is None
        and join.member_id is None
        and join.kind is TierKind.PAID
        and not join.requires_screening
        and _claimed(join, join) is None
    )


def _claimed(join: Row, members: Row) -> int | None:
    """The id of the member the applicant of ``join`` is already, of those read in
    ``members``: by their WeChat when it proved them and they typed no contact we can send
    to, else by the contact typed (see :func:`membership.services._member_by_contact`)."""
    if join.wechat_openid and join.contact_kind not in SENDABLE_CONTACTS:
        return members.member_by_openid
    return members.member_by_contact


def _admit(
    connection: sa.Connection,
    payment: Row,
    join: Row,
    number: tuple[int, str],
    openid: str | None,
    external_id: str | None,
    now: datetime,
) -> None:
    """Write the payment confirmed and its payer admitted (see the module's docstring)."""
    community_id, actor = join.community_id, f"webhook:{payment.provider}"
    number, label = number
    days = join.duration_days
    member_id, membership_id = _write_admission(
        connection,
        payment={"payment_id": payment.id, "now": now},
        ledger={
            "now": now,
            "amount": payment.amount,
            "currency": payment.currency,
            "order_id": payment.order_id,
            "payment_id": payment.id,
            "provider": payment.provider,
            "external_id": external_id,
            "discount": join.list_amount - join.amount,
        },
        reference={
            "provider": payment.provider,
            "external_id": external_id,
            "payment_id": payment.id,
            "refund_id": None,
        }
        if external_id
        else None,
        member={
            "community_id": community_id,
            "display_name": join.display_name,
            "contact_kind": join.contact_kind,
            "contact_value": join.contact_value,
            "wechat_id": join.wechat_id,
            "contact_proven_at": join.contact_proven_at,
            # The payer's WeChat, unless it is someone else's (see services._link_openid).
            "wechat_openid": (join.wechat_openid or openid)
            if join.member_by_openid is None
            else None,
            "now": now,
            "number": number,
            "number_label": label,
        },
        membership={
            "tier_id": join.tier_id,
            "now": now,
            "ends_at": now + timedelta(days=days) if days else None,
            "order_id": payment.order_id,
        },
        application={"application_id": join.application_id},
        order={"order_id": payment.order_id, "now": now},
    )
    audit.record_row(
        "payment.confirmed",
        "payments",
        payment.id,
        actor=actor,
        community_id=community_id,
        data={"amount": Money(payment.amount, payment.currency).iso_str()},
        now=now,
    )
    record_event(
        community_id,
        "payment.confirmed",
        {
            "payment": payment.public_id,
            "order": join.public_id,
            "amount": payment.amount,
            "currency": payment.currency,
        },
        now=now,
    )
    audit.record_row(
        "order.paid", "orders", payment.order_id, actor=actor, community_id=community_id, now=now
    )
    audit.record_row(
        "member.admitted",
        "members",
        member_id,
        actor="system",
        community_id=community_id,
        data={"tier": join.code, "number": label, "application": join.application_id},
        now=now,
    )
    _invite(connection, join.tier_id, member_id, membership_id, community_id, now)
    record_event(
        community_id,
        "member.admitted",
        {"member": member_id, "number": label, "tier": join.code, "membership": membership_id},
        now=now,
    )
    count_paid_admission(
        db.session(),
        community_id,
        amount=payment.amount,
        currency=payment.currency,
        applied_at=join.applied_at,
        now=now,
    )
    _keep_loaded_in_step(Payment, payment.id, status=PaymentStatus.CONFIRMED, confirmed_at=now)
    _keep_loaded_in_step(
        Order, payment.order_id, status=OrderStatus.PAID, paid_at=now, member_id=member_id
    )
    _keep_loaded_in_step(
        Application, join.application_id, status=ApplicationStatus.ADMITTED, member_id=member_id
    )


def _write_admission(
    connection: sa.Connection,
    *,
    payment: dict,
    ledger: dict,
    reference: dict | None,
    member: dict,
    membership: dict,
    application: dict,
    order: dict,
) -> tuple[int, int]:
    """The admission's writes, given the values of each: the payment confirmed, its ledger
    entry, its provider id mapped (unless ``reference`` is None), the member inserted, and
    its membership, application and order that name it. Returns the member's and the
    membership's ids. On PostgreSQL one statement (:func:`_admission_at_once`); on
    SQLite, where a statement writes one table, one each."""
    if connection.dialect.name == "postgresql":
        at_once = _admission_at_once(reference is not None)
        values = payment | ledger | (reference or {}) | member | membership | application | order
        member_id, membership_id = connection.execute(at_once, _at_once(values)).one()
        return member_id, membership_id
    connection.execute(_CONFIRM_PAYMENT, payment)
    connection.execute(_INSERT_LEDGER, ledger)
    if reference is not None:
        connection.execute(reference_mapping("sqlite"), reference)
    member_id = connection.execute(_INSERT_MEMBER, member).inserted_primary_key[0]
    named = {"member_id": member_id}
    inserted = connection.execute(_INSERT_MEMBERSHIP, membership | named)
    connection.execute(_ADMIT_APPLICATION, application | named)
    connection.execute(_PAY_ORDER, order | named)
    return member_id, inserted.inserted_primary_key[0]


def _invite(
    connection: sa.Connection,
    tier_id: int,
    member_id: int,
    membership_id: int,
    community_id: int,
    now: datetime,
) -> None:
    """The new member's invitation to the first of the tier's groups with room (see
    :func:`membership.services.issue_invitation`), its seat taken and its grant queued;
    waiting when every group is full."""
    groups = [_GroupRow(*row) for row in connection.execute(_LOCK_GROUPS, {"tier_id": tier_id})]
    group = choose_group(groups, {g.id: g.seats_taken for g in groups}, now=now)
    if group is not None and not group.qr_valid(now) and group.qr_mime is not None:
        tell_expired(db.session.get(Group, group.id), now=now)
    status = InvitationStatus.ISSUED if group else InvitationStatus.WAITING
    invitation = {
        "token": new_token(24),
        "member_id": member_id,
        "membership_id": membership_id,
        "group_id": group.id if group else None,
        "status": status,
        "now": now,
        "issued_at": now if group else None,
    }
    if group is None:
        invitation_id = connection.execute(_INSERT_INVITATION, invitation).inserted_primary_key[0]
    elif connection.dialect.name == "postgresql":
        invitation_id, taken = connection.execute(_SEAT_AT_ONCE, _at_once(invitation)).one()
    else:
        invitation_id = connection.execute(_INSERT_INVITATION, invitation).inserted_primary_key[0]
        connection.execute(_INSERT_TASK, {"invitation_id": invitation_id, "now": now})
        taken = connection.execute(_TAKE_SEAT, {"group_id": group.id}).scalar_one()
    if group is not None:
        _keep_loaded_in_step(Group, group.id, seats_taken=taken)
    audit.record_row(
        f"invitation.{status}",
        "invitations",
        invitation_id,
        actor="system",
        community_id=community_id,
        data={"group": group.name if group else None},
        now=now,
    )
