"""Joining a community: applications, admission, member numbers and group invitations.

Functions here flush but never commit; the request or command that calls them commits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask_babel import gettext as _
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from core import audit, outbox
from core.clock import utcnow
from core.db import db
from core.events import record_event
from core.forms import half_width
from core.limits import Limit, TooManyTries, claim
from core.outbox import Channel, MessageKind
from core.security import new_token
from membership.access import queue_platform_task
from membership.live_codes import choose_group, tell_expired
from membership.models import (
    LAPSED_MEMBERSHIP_STATUSES,
    LIVE_INVITATION_STATUSES,
    SENDABLE_CONTACTS,
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Group,
    Invitation,
    InvitationStatus,
    Member,
    Membership,
    MembershipStatus,
    TaskAction,
    Tier,
    TierAudience,
    TierKind,
    format_member_number,
    tier_groups,
)
from payments.discounts import (
    DiscountRefused,
    Purchase,
    Sale,
    check_price,
    discount_order,
    normalise_code,
)
from payments.models import FlagKind, Order, OrderStatus, PaymentStatus
from payments.services import create_order, flag_order

#: Join forms sent, per client and for the whole install (a flash re-entry brings about a
#: hundred people within minutes, many behind one carrier's address).
JOIN_SUBMISSIONS = (
    Limit("join:client", 60, timedelta(minutes=15)),
    Limit("join:all", 5000, timedelta(minutes=15)),
)
#: "You are a member already" messages, per member.
ALREADY_A_MEMBER_NOTICES = Limit("already-a-member-notice", 1, timedelta(hours=1))


class JoinRefused(Exception):
    """The prospect cannot join this tier now; the message says why, Chinese first."""


class AlreadyAMember(JoinRefused):
    """The contact given belongs to a member: they must log in first, so one person is
    never two members of one community."""

    def __init__(self) -> None:
        super().__init__(_("This contact belongs to a member: please log in first"))


def normalise_contact(kind: ContactKind, value: str) -> str:
    """One spelling per contact, so that the same person is found again: in half-width
    characters, e-mail and WeChat IDs in lower case, mainland phone numbers without the
    +86."""
    value = half_width(value).strip()
    if kind is ContactKind.PHONE:
        value = value.replace(" ", "").replace("-", "")
        for prefix in ("+86", "86"):
            if value.startswith(prefix) and len(value) == len(prefix) + 11:
                return value.removeprefix(prefix)
        return value
    return value.lower()


#: Statements every admission runs, built once (building them cost more than running).
_MEMBER_BY_CONTACT = sa.select(Member).where(
    Member.community_id == sa.bindparam("community_id"),
    Member.contact_kind == sa.bindparam("kind", type_=Member.contact_kind.type),
    Member.contact_value == sa.bindparam("value"),
)
_APPLICATION_OF_ORDER = (
    sa.select(Application)
    .where(Application.order_id == sa.bindparam("order_id"))
    .options(joinedload(Application.tier))
)
_COMMUNITIES = Community.__table__
#: On the table, not the class: run on the session's connection, it skips the ORM's
#: statement handling (a third of its cost); the loaded community is set in step by hand.
_NEXT_MEMBER_NUMBER = (
    sa.update(_COMMUNITIES)
    .where(_COMMUNITIES.c.id == sa.bindparam("community_id"))
    .values(last_member_number=_COMMUNITIES.c.last_member_number + 1)
    .returning(_COMMUNITIES.c.last_member_number, _COMMUNITIES.c.member_number_pattern)
)
_MEMBER_NUMBER_BACK = (
    sa.update(_COMMUNITIES)
    .where(_COMMUNITIES.c.id == sa.bindparam("community_id"))
    .values(last_member_number=_COMMUNITIES.c.last_member_number - 1)
    .returning(_COMMUNITIES.c.last_member_number)
)
#: The community's row locked as the number's draw locks it (see :func:`hold_admissions`).
_HOLD_ADMISSIONS = (
    sa.select(_COMMUNITIES.c.id)
    .where(_COMMUNITIES.c.id == sa.bindparam("community_id"))
    .with_for_update()
)
_TIER_GROUPS_LOCKED = (
    sa.select(Group)
    .join(tier_groups, tier_groups.c.group_id == Group.id)
    .where(tier_groups.c.tier_id == sa.bindparam("tier_id"))
    .order_by(Group.id)
    .with_for_update(of=Group)
    .execution_options(populate_existing=True)
)


_ORDERS = Order.__table__
_ORDER_BUYER = (
    _ORDERS.update()
    .where(_ORDERS.c.id == sa.bindparam("order_id"))
    .values(member_id=sa.bindparam("member_id"))
)


def _keep_loaded_in_step(model: type[db.Model], row_id: int, **values: Any) -> None:
    """After a Core statement changed a row: the session's copy of it, if it has one, holds
    the new ``values`` as committed (nothing left for a flush to write)."""
    session = db.session()
    if not session.identity_map:  # a webhook's fast path loads nothing
        return
    loaded = session.identity_map.get(session.identity_key(model, row_id))
    if loaded is not None:
        for name, value in values.items():
            set_committed_value(loaded, name, value)


def find_member(community_id: int, kind: ContactKind, value: str) -> Member | None:
    return db.session.scalar(
        _MEMBER_BY_CONTACT,
        {"community_id": community_id, "kind": kind, "value": normalise_contact(kind, value)},
    )


def check_tier_open(tier: Tier, member: Member | None = None) -> None:
    """Raise :class:`JoinRefused` unless ``tier`` takes this applicant now: anyone from the
    join page, or, for a re-entry tier, a logged-in member whose access lapsed."""
    if not tier.active:
        raise JoinRefused(_("This tier is closed to new members"))
    if member is not None and member.community_id != tier.community_id:
        member = None
    if tier.audience is TierAudience.RETURNING:
        if member is None:
            raise JoinRefused(_("This tier is for returning members: please log in first"))
        if not member.may_reenter:
            raise JoinRefused(
                _("The re-entry price is for former members whose access was purged or ran out")
            )
    if tier.audience is TierAudience.MEMBERS and (
        member is None or member.current_membership() is None
    ):
        raise JoinRefused(_("This tier is for current members: please log in"))
    if member is not None and member.holds(tier.id):
        raise JoinRefused(_("You are a member of this tier already"))


#: Built once: every join form sent runs it (building it cost more than running it).
_APPLICATION_BY_SUBMISSION = sa.select(Application).where(
    Application.submission_key == sa.bindparam("key")
)


def submit_application(
    tier: Tier,
    *,
    display_name: str,
    contact_kind: ContactKind | None,
    contact_value: str | None,
    submission_key: str,
    member: Member | None = None,
    answers: dict[str, Any] | None = None,
    wechat_id: str | None = None,
    wechat_openid: str | None = None,
    awaiting_proof: bool = False,
    checked_new: bool = False,
    now: datetime | None = None,
) -> Application:
    """Record an application to ``tier`` (flushed), by a prospect or by a logged-in
    ``member`` (whose contact and number it keeps).

    A tier that requires screening keeps the application (and its ``answers``) for an
    admin's review, and invites the applicant to the community's lobby meanwhile. Otherwise
    a paid tier gets an order at the tier's price, to be paid next, and a free tier admits
    the applicant at once. With ``awaiting_proof`` (the join page's applicant has no proven
    channel yet) none of that happens until :func:`prove_application`: the application
    waits in ``awaiting_proof``, a paid tier's order made but not payable. ``wechat_openid``
    is the openid WeChat's OAuth gave this browser (a proof in itself). The same
    ``submission_key`` (one rendering of the join form) always gives back the first
    application, so a form sent twice makes one order; with ``checked_new`` the caller
    looked for the key already in this request and found none, and a form sent twice at
    once fails at the flush on the key's unique index (an ``IntegrityError`` the caller
    answers). A prospect giving a member's contact goes on like anyone else (see
    :func:`admit`); the page never tells them whose contact it is. The join view writes
    its commonest case (a new prospect, a paid tier, a code to send) with
    :mod:`membership.fresh_application` instead: the same rows, by statements built once.
    """
    now = now or utcnow()
    if not checked_new:
        existing = db.session.scalar(_APPLICATION_BY_SUBMISSION, {"key": submission_key})
        if existing is not None:
            return existing
    check_tier_open(tier, member)
    if member is None:
        contact_value = normalise_contact(contact_kind, contact_value)
    else:
        contact_kind, contact_value = member.contact_kind, member.contact_value
    application = Application(
        public_id=new_token(16),
        submission_key=submission_key,
        community_id=tier.community_id,
        tier=tier,
        display_name=display_name,
        contact_kind=contact_kind,
        contact_value=contact_value,
        wechat_id=wechat_id or None,
        wechat_openid=wechat_openid,
        rules_accepted_at=now,
        status=ApplicationStatus.AWAITING_PROOF
        if awaiting_proof
        else ApplicationStatus.AWAITING_PAYMENT,
        member=member,
        created_at=now,
    )
    actor = f"member:{member.id}" if member else "prospect"
    if tier.requires_screening:
        application.answers = answers or {}
    elif tier.kind is TierKind.PAID:
        order = create_order(
            tier.price_money,
            f"{tier.community.name} · {tier.name}",
            community_id=tier.community_id,
            product=tier.name,
            member_id=member.id if member else None,
            actor=actor,
            now=now,
        )
        db.session.flush()
        application.order_id = order.id
    db.session.add(application)
    audit.record(
        "application.submitted", application, actor=actor, data={"tier": tier.code}, now=now
    )
    record_event(
        tier.community_id,
        "application.submitted",
        {"application": application.public_id, "tier": tier.code},
        now=now,
    )
    if not awaiting_proof:
        _go_on(application, actor=actor, now=now)
    return application


def _go_on(application: Application, *, actor: str, now: datetime) -> None:
    """The step after an application with a proven channel: a screened tier's review (and
    the lobby meanwhile), a free tier's admission; a paid tier's order awaits payment."""
    application.status = ApplicationStatus.AWAITING_PAYMENT
    if application.tier.requires_screening:
        application.status = ApplicationStatus.PENDING_REVIEW
        application.member = _wait_in_lobby(application, now=now) or application.member
    elif application.tier.kind is TierKind.FREE:
        admit(application, actor=actor, now=now)
    elif db.session.get(Order, application.order_id).status is OrderStatus.PAID:
        # A coupon made it free while the channel was being proven: nothing left to pay.
        admit(application, actor=actor, now=now)


def needs_proof(member: Member | None, *, wechat_openid: str | None) -> bool:
    """Whether a join must prove a channel before it goes on: unless the applicant is a
    member with a channel proven already, or WeChat's OAuth gave this browser an openid."""
    if wechat_openid:
        return False
    return member is None or not member.is_reachable


def coupon_buyer(application: Application) -> str:
    """Whom a coupon's per-person limit counts for an application: its member, or the
    contact it was made with."""
    if application.member_id is not None:
        return f"member:{application.member_id}"
    return f"{application.contact_kind}:{application.contact_value}"


def keep_coupon_for_proof(application: Application, order: Order, code: str, *, now: datetime):
    """The coupon ``code`` a prospect typed with ``application``, whose channel is not
    proven yet: checked now by the coupon's rules (an unknown or spent code is refused at
    once, :class:`DiscountRefused`), kept on the application, and applied to ``order`` by
    :func:`prove_application`. Until then it holds none of the coupon's uses: anyone may
    type anyone's phone number, and a one-use coupon must not be kept from the members it
    was meant for by applications nobody proves."""
    code = normalise_code(code)
    purchase = Purchase(product=f"tier:{application.tier_id}", buyer=coupon_buyer(application))
    checked = check_price(Sale.of(order), code, purchase, now=now)
    if checked.refusal is not None:
        raise DiscountRefused(checked.refusal)
    application.coupon_code = code


def _apply_kept_coupon(application: Application, *, actor: str, now: datetime) -> str | None:
    """The coupon code kept by :func:`keep_coupon_for_proof`, applied to the application's
    order now that its channel is proven (its use reserved, under the coupon's lock).
    Returns why it no longer applies (used up meanwhile, expired…): the order keeps its
    price, and the refusal is recorded. None when it applied, or none was kept."""
    if application.coupon_code is None or application.order_id is None:
        return None
    order = db.session.get(Order, application.order_id)
    purchase = Purchase(product=f"tier:{application.tier_id}", buyer=coupon_buyer(application))
    try:
        discount_order(order, application.coupon_code, purchase, actor=actor, now=now)
    except DiscountRefused as refusal:
        audit.record(
            "application.coupon_refused",
            application,
            actor="system",
            data={"code": application.coupon_code},
            now=now,
        )
        return str(refusal)
    return None


@dataclass(frozen=True, slots=True)
class Proof:
    """What :func:`prove_application` did: whether the application went on (False: it had
    gone on already), and why the coupon code kept for it was refused, if it was."""

    went_on: bool
    coupon_refused: str | None = None


def prove_application(
    application: Application, *, wechat_openid: str | None = None, now: datetime
) -> Proof:
    """The applicant proved a channel: the code sent to the application's contact came
    back, or (``wechat_openid``) WeChat's OAuth named them. The coupon code kept for it is
    applied (see :func:`keep_coupon_for_proof`) and the application goes on (see
    :func:`_go_on`); the proof is the member's at admission. One conditional UPDATE, so two
    proofs at once go on once. Flushed."""
    moved = db.session.execute(
        sa.update(Application)
        .where(
            Application.id == application.id,
            Application.status == ApplicationStatus.AWAITING_PROOF,
        )
        .values(status=ApplicationStatus.AWAITING_PAYMENT)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not moved:
        return Proof(went_on=False)
    if wechat_openid:
        application.wechat_openid = wechat_openid
    else:
        application.contact_proven_at = now
    actor = f"member:{application.member_id}" if application.member_id else "prospect"
    audit.record(
        "application.channel_proven",
        application,
        actor=actor,
        data={"by": "wechat" if wechat_openid else application.contact_kind.value},
        now=now,
    )
    refused = _apply_kept_coupon(application, actor=actor, now=now)
    _go_on(application, actor=actor, now=now)
    return Proof(went_on=True, coupon_refused=refused)


def follow_up_application(
    person: Application | Member,
    tier: Tier,
    *,
    member: Member | None,
    status: ApplicationStatus,
    now: datetime,
    **fields: Any,
) -> Application:
    """A new application to ``tier`` by the person behind an earlier application or a
    member record (a lobby stay, a renewal, an application made again). Added, unflushed."""
    application = Application(
        public_id=new_token(16),
        submission_key=new_token(24),
        community_id=tier.community_id,
        tier=tier,
        display_name=person.display_name,
        contact_kind=person.contact_kind,
        contact_value=person.contact_value,
        rules_accepted_at=now,
        status=status,
        member=member,
        created_at=now,
        **fields,
    )
    db.session.add(application)
    return application


def _wait_in_lobby(application: Application, *, now: datetime) -> Member | None:
    """Admit an applicant under review to the community's lobby tier, unless they are in
    it already. Returns the member (None when there is no lobby)."""
    lobby = application.community.lobby_tier
    member = application.member
    if lobby is None:
        return member
    if member is not None and member.holds(lobby.id):
        return member
    lobby_application = follow_up_application(
        application,
        lobby,
        member=member,
        status=ApplicationStatus.AWAITING_PAYMENT,
        now=now,
        wechat_id=application.wechat_id,
        contact_proven_at=application.contact_proven_at,
        wechat_openid=application.wechat_openid,
    )
    return admit(lobby_application, actor="system", now=now)


#: Where an order's state keeps the application it pays for (see :func:`application_paid_by`).
_APPLICATION = "application"


def application_paid_by(order: Order) -> Application | None:
    """The application ``order`` pays for, or None (an order pays for one thing: a tier's
    application, or a course's enrolment). Each ``order_paid`` receiver may ask; it is
    looked up once per order and kept on the order's state (an order's application, made
    with it, never changes)."""
    info = sa.inspect(order).info
    if _APPLICATION not in info:
        with db.session.no_autoflush:  # the application was committed when it was made
            info[_APPLICATION] = db.session.scalar(_APPLICATION_OF_ORDER, {"order_id": order.id})
    return info[_APPLICATION]


def admit_paid_application(order: Order, *, now: datetime) -> None:
    """``order_paid`` receiver: the application this order paid for becomes a member."""
    application = application_paid_by(order)
    if application is None or application.status is not ApplicationStatus.AWAITING_PAYMENT:
        return
    if application.renews is not None:
        extend_membership(application, now=now)
    else:
        admit(application, actor="system", now=now)


def extend_membership(application: Application, *, now: datetime) -> Membership:
    """A paid renewal: the membership runs on for the tier's days from its current end
    (not from today), with the same member number and invitations.

    Paid after its term ran out or a purge ended it, the member paid for access: it is
    active again for the tier's days from today, with a new invitation. Ended for a
    refund, a lost chargeback or by an admin, it stays ended and the order is put before
    the admins (refund it, or let the member back), as is a renewal of a tier the member
    holds again by another membership."""
    membership = application.renews
    member = membership.member
    days = timedelta(days=membership.tier.duration_days or 0)
    application.status = ApplicationStatus.ADMITTED
    order = db.session.get(Order, application.order_id)
    if membership.status is MembershipStatus.ENDED or (
        membership.status in LAPSED_MEMBERSHIP_STATUSES and member.holds(membership.tier_id)
    ):
        flag_order(
            order,
            FlagKind.BOUGHT_TWICE if member.holds(membership.tier_id) else FlagKind.PAID_AFTER_END,
            payment=_paying(order),
            detail=f"{membership.tier.name} · {membership.status}",
            actor="system",
            now=now,
        )
        return membership
    restored = membership.status in LAPSED_MEMBERSHIP_STATUSES
    membership.ends_at = max(membership.ends_at or now, now) + days
    application.renewal_days = days.days or None
    if restored:
        membership.status = MembershipStatus.ACTIVE
    audit.record(
        "membership.renewed",
        membership,
        actor="system",
        data={
            "ends_at": membership.ends_at.isoformat(),
            "application": application.id,
            "restored": restored,
        },
        now=now,
    )
    record_event(
        application.community_id,
        "membership.renewed",
        {
            "membership": membership.id,
            "member": membership.member_id,
            "ends_at": membership.ends_at.isoformat(),
        },
        now=now,
    )
    if restored:
        issue_invitation(membership, actor="system", now=now)
    return membership


def _paying(order: Order):
    """The order's latest confirmed payment: the one to refund when it was not needed."""
    confirmed = [p for p in order.payments if p.status is PaymentStatus.CONFIRMED]
    return confirmed[-1] if confirmed else None


def admit(application: Application, *, actor: str, now: datetime) -> Member:
    """Give the applicant a membership of the tier and an invitation to the first of its
    groups with room. A newcomer becomes a member; a returning member keeps their record
    and number. A member's first paid tier gives them the next number."""
    tier = application.tier
    member = application.member
    # What the transaction changed before (a payment, its order) bears on none of these
    # reads: it is flushed once, with the member, below.
    if member is None:
        hold_admissions(application.community_id)
    with db.session.no_autoflush:
        claimed = member is None and _member_by_contact(application, now=now)
        if claimed:
            member = claimed
        bought_twice = (
            member is not None and application.order_id is not None and member.holds(tier.id)
        )
        if not bought_twice:
            member = _admitted_member(application, member, claimed=bool(claimed), now=now)
    if bought_twice:
        return _bought_twice(application, member, now=now)
    membership = Membership(
        member=member,
        tier=tier,
        status=MembershipStatus.ACTIVE,
        starts_at=now,
        ends_at=now + timedelta(days=tier.duration_days) if tier.duration_days else None,
        order_id=application.order_id,
    )
    db.session.add(membership)
    application.status = ApplicationStatus.ADMITTED
    application.member = member
    audit.record(
        "member.admitted",
        member,
        actor=actor,
        data={"tier": tier.code, "number": member.number_label, "application": application.id},
        now=now,
    )
    issue_invitation(membership, actor=actor, now=now)
    # One flush for all the admission wrote (and the payment before it): the ids of the
    # member and the membership, for the event and the order.
    db.session.flush()
    record_event(
        member.community_id,
        "member.admitted",
        {
            "member": member.id,
            "number": member.number_label,
            "tier": tier.code,
            "membership": membership.id,
        },
        now=now,
    )
    if application.order_id is not None:
        # Written at once, not left for a second flush at the commit.
        db.session.connection().execute(
            _ORDER_BUYER, {"order_id": application.order_id, "member_id": member.id}
        )
        _keep_loaded_in_step(Order, application.order_id, member_id=member.id)
    return member


def _admitted_member(
    application: Application, member: Member | None, *, claimed: bool, now: datetime
) -> Member:
    """The member an admission makes or moves on: a newcomer, added with the next number
    when the tier is paid, or ``member``, numbered now when this is their first paid tier
    (``claimed``: found by the contact the applicant typed)."""
    tier = application.tier
    numbered = tier.kind is TierKind.PAID and (member is None or member.number is None)
    # The number before the member: a newcomer is then inserted with it in one statement.
    number, label = allocate_member_number(application.community_id) if numbered else (None, None)
    if member is None:
        member = Member(
            community_id=application.community_id,
            display_name=application.display_name,
            contact_kind=application.contact_kind,
            contact_value=application.contact_value,
            wechat_id=application.wechat_id,
            contact_proven_at=application.contact_proven_at,
            created_at=now,
            number=number,
            number_label=label,
        )
        db.session.add(member)
    elif numbered:
        member.number, member.number_label = number, label
    if not claimed:  # the payer's WeChat is no credential for someone else's record
        _link_openid(member, application)
        if member.wechat_id is None:
            member.wechat_id = application.wechat_id
    return member


def _bought_twice(application: Application, member: Member, *, now: datetime) -> Member:
    """A paid application of someone who holds its tier already (another of their orders
    paid for it: a second try after the first payment seemed lost, which then came):
    one person stays one member with one membership, and this order's payment is put
    before the admins to refund."""
    application.status = ApplicationStatus.ADMITTED
    application.member = member
    order = db.session.get(Order, application.order_id)
    order.member_id = member.id
    flag_order(
        order,
        FlagKind.BOUGHT_TWICE,
        payment=_paying(order),
        detail=f"{application.tier.name} · {member.number_label or member.display_name}",
        actor="system",
        now=now,
    )
    return member


def _member_by_contact(application: Application, *, now: datetime) -> Member | None:
    """The member who has the contact a prospect typed, if any: one person is one member,
    so what the application buys lands on that record. The browser that applied gets only
    what it bought (its status page and invitation), never a session of the member. When
    the contact was never proven, nobody can tell the earlier claimant from this one:
    the sessions and links made from the claim end and a WeChat bound through it is
    unbound, so only a code sent to the contact opens the member's page from now on."""
    if application.wechat_openid and application.contact_kind not in SENDABLE_CONTACTS:
        # Proven by WeChat with only a WeChat ID or nickname typed: that text is nobody's
        # identity (two people may type the same nickname); the openid is. A member it is
        # bound to is this person (who applied twice, say).
        return find_member_by_openid(application.community_id, application.wechat_openid)
    member = find_member(
        application.community_id, application.contact_kind, application.contact_value
    )
    if member is None:
        return None
    if application.contact_proven_at is not None:
        # A code sent to the contact came back from this applicant: the contact is theirs.
        if member.contact_proven_at is None:
            prove_contact(member, now=now)
        return member
    if member.contact_proven_at is not None:
        return member
    member.credential_version += 1
    data: dict[str, Any] = {"application": application.id}
    if member.wechat_openid:
        member.wechat_openid = None
        data["wechat_unbound"] = True
    audit.record("member.claim_reset", member, actor="system", data=data, now=now)
    return member


def prove_contact(member: Member, *, now: datetime) -> None:
    """The member's contact came back with a code: it is theirs from now on. Everything
    made from the claim before ends: sessions and links (a new credential version) and a
    WeChat bound meanwhile (whoever held the claim may have bound their own)."""
    member.contact_proven_at = now
    member.credential_version += 1
    data = {"contact": member.contact_kind.value}
    if member.wechat_openid:
        member.wechat_openid = None
        data["wechat_unbound"] = True
    audit.record("member.contact_proven", member, actor=f"member:{member.id}", data=data, now=now)


#: Built once: what a join form asks before it writes (see :func:`sent_before_and_whose`).
_SENT_BEFORE_AND_WHOSE = sa.select(
    sa.select(Application.id)
    .where(Application.submission_key == sa.bindparam("key"))
    .scalar_subquery(),
    sa.select(Member.id)
    .where(
        Member.community_id == sa.bindparam("community_id"),
        Member.contact_kind == sa.bindparam("kind", type_=Member.contact_kind.type),
        Member.contact_value == sa.bindparam("value"),
    )
    .limit(1)
    .scalar_subquery(),
)


def sent_before_and_whose(
    submission_key: str, community_id: int, kind: ContactKind | None, value: str | None
) -> tuple[Application | None, int | None]:
    """Called by the join form before it writes anything, in one statement: the
    application its ``submission_key`` made before (a form sent again), and the id of the
    community's member whose contact the prospect typed (``kind`` and ``value``; None
    when nobody's, or none typed)."""
    if kind is not None and value is not None:
        value = normalise_contact(kind, value)
    application_id, member_id = (
        db.session.connection()
        .execute(
            _SENT_BEFORE_AND_WHOSE,
            {"key": submission_key, "community_id": community_id, "kind": kind, "value": value},
        )
        .one()
    )
    application = db.session.get(Application, application_id) if application_id else None
    return application, member_id


def notify_member_of_their_contact(
    community: Community, member_id: int, kind: ContactKind, *, login_url: str, now: datetime
) -> int | None:
    """A prospect typed the contact of the member ``member_id`` (of kind ``kind``) on the
    join page: tell the member they are one already and can log in (queued, flushed; at
    most once an hour, so the join page cannot be used to flood a member). Returns the
    outbox id, or None."""
    if kind not in (ContactKind.PHONE, ContactKind.EMAIL):
        return None
    member = db.session.get(Member, member_id)
    try:
        claim([(ALREADY_A_MEMBER_NOTICES, str(member.id))], now=now)
    except TooManyTries:
        return None
    with speaking_to(member):
        subject = _("%(community)s: you are a member already", community=community.name)
        body = _(
            "Someone used this contact to join %(community)s. If it was you: you are a "
            "member already; log in at %(link)s",
            community=community.name,
            link=login_url,
        )
    return outbox.enqueue(
        MessageKind.NOTICE,
        contact_routes(kind, member.contact_value),
        subject,
        body,
        params={"community": community.name, "link": login_url},
        member_id=member.id,
        now=now,
    ).id


#: How a withdrawal of money ends a membership, by the reason ``access_withdrawn`` gives.
_WITHDRAWN_STATUS = {
    "refunded": MembershipStatus.ENDED,
    "disputed": MembershipStatus.SUSPENDED,
    "dispute_lost": MembershipStatus.ENDED,
}


def end_membership(
    membership: Membership, status: MembershipStatus, *, reason: str, actor: str, now: datetime
) -> bool:
    """Stop a membership's access: its status changes and its invitations are revoked.
    Returns False when it already had that status."""
    if membership.status is status:
        return False
    membership.status = status
    audit.record(f"membership.{status}", membership, actor=actor, data={"reason": reason}, now=now)
    record_event(
        membership.member.community_id,
        "membership.ended",
        {
            "membership": membership.id,
            "member": membership.member_id,
            "status": status.value,
            "reason": reason,
        },
        now=now,
    )
    for invitation in membership.member.invitations:
        if invitation.membership_id == membership.id and invitation.status in (
            *LIVE_INVITATION_STATUSES,
            InvitationStatus.WAITING,
        ):
            if invitation.status in LIVE_INVITATION_STATUSES:
                queue_platform_task(invitation, TaskAction.REVOKE, now=now)
            invitation.status = InvitationStatus.REVOKED
            audit.record(
                "invitation.revoked", invitation, actor=actor, data={"reason": reason}, now=now
            )
    return True


def withdraw_paid_access(order: Order, *, now: datetime, reason: str) -> None:
    """``access_withdrawn`` receiver: the membership the order paid for is suspended or
    ended and its invitations revoked; the days a renewal order added are taken back.
    Idempotent."""
    membership = db.session.scalar(sa.select(Membership).where(Membership.order_id == order.id))
    if membership is not None:
        end_membership(
            membership, _WITHDRAWN_STATUS[reason], reason=reason, actor="system", now=now
        )
        return
    application = application_paid_by(order)
    if (
        application is not None
        and application.status is ApplicationStatus.ADMITTED
        and application.renewal_days
    ):
        _take_back_renewal(application, reason=reason, now=now)


def _take_back_renewal(application: Application, *, reason: str, now: datetime) -> None:
    """A renewal whose money went back: the days it added come off the membership, which
    keeps what its other payments bought. Past its end then, it expires now (its
    invitations revoked)."""
    membership = application.renews
    application.status = ApplicationStatus.TAKEN_BACK
    membership.ends_at -= timedelta(days=application.renewal_days)
    _renewal_changed(membership, application, "membership.renewal_taken_back", reason, now)
    if membership.status is MembershipStatus.ACTIVE and membership.ends_at <= now:
        end_membership(membership, MembershipStatus.EXPIRED, reason=reason, actor="system", now=now)


def _give_back_renewal(application: Application, *, now: datetime) -> None:
    """A renewal taken back for a dispute that was then won: its days are the member's
    again, and a membership that expired meanwhile is active again, with a new invitation
    (the old one's seat may have gone to someone else)."""
    membership = application.renews
    application.status = ApplicationStatus.ADMITTED
    membership.ends_at += timedelta(days=application.renewal_days)
    _renewal_changed(membership, application, "membership.renewed", "dispute_won", now)
    if membership.status is MembershipStatus.EXPIRED and membership.ends_at > now:
        membership.status = MembershipStatus.ACTIVE
        issue_invitation(membership, actor="system", now=now)


def _renewal_changed(
    membership: Membership, application: Application, what: str, reason: str | None, now
) -> None:
    """Audit a renewal's days taken back (``what``: ``membership.renewal_taken_back``) or
    given again (``membership.renewed``), and tell the event stream the new end."""
    ends_at = membership.ends_at.isoformat()
    data = {"ends_at": ends_at, "application": application.id}
    audit.record(what, membership, actor="system", data=data | {"reason": reason}, now=now)
    record_event(
        membership.member.community_id,
        what,
        {"membership": membership.id, "member": membership.member_id, "ends_at": ends_at},
        now=now,
    )


def restore_paid_access(order: Order, *, now: datetime) -> None:
    """``access_restored`` receiver: a suspended membership is active again, with a new
    invitation (the old one's seat may have gone to someone else); a renewal taken back
    gives its days again."""
    membership = db.session.scalar(sa.select(Membership).where(Membership.order_id == order.id))
    if membership is None:
        application = application_paid_by(order)
        if application is not None and application.status is ApplicationStatus.TAKEN_BACK:
            _give_back_renewal(application, now=now)
        return
    if membership.status is not MembershipStatus.SUSPENDED:
        return
    membership.status = MembershipStatus.ACTIVE
    audit.record("membership.restored", membership, actor="system", now=now)
    issue_invitation(membership, actor="system", now=now)


def contact_routes(kind: ContactKind, value: str) -> list[list[str]]:
    """How a typed contact is reached: a phone by SMS, an e-mail by e-mail; a WeChat ID
    cannot be sent to."""
    channel = {ContactKind.PHONE: Channel.SMS, ContactKind.EMAIL: Channel.EMAIL}.get(kind)
    return [[channel.value, value]] if channel else []


def member_routes(member: Member) -> list[list[str]]:
    """Every way to reach ``member``: their WeChat (by openid), then their contact."""
    wechat = [[Channel.WECHAT.value, member.wechat_openid]] if member.wechat_openid else []
    return wechat + contact_routes(member.contact_kind, member.contact_value)


def member_locale(member: Member) -> str | None:
    """The language what is sent to ``member`` is written in: the one they chose with the
    switch, else their community's (None: zh_CN, see :func:`core.outbox.written_in`)."""
    return member.locale or member.community.locale


def speaking_to(member: Member) -> AbstractContextManager[None]:
    """Compose a message to ``member`` inside this block: its text (and money) is then
    in their language (:func:`member_locale`), wherever it is queued from."""
    return outbox.written_in(member_locale(member))


def message_member(
    member: Member,
    kind: MessageKind,
    subject: str,
    body: str,
    *,
    params: dict[str, str],
    now: datetime,
) -> int:
    """Queue a message to ``member`` by the best channel that reaches them when it is sent
    (flushed). ``params`` fill the channel's template. ``subject`` and ``body`` are
    composed in the member's language: inside :func:`speaking_to`, or given as lazy
    strings (``lazy_gettext(…, name=value)``), which are rendered here, in it. Returns
    the outbox id."""
    with speaking_to(member):
        subject, body = str(subject), str(body)
    return outbox.enqueue(
        kind, member_routes(member), subject, body, params=params, member_id=member.id, now=now
    ).id


def find_member_by_openid(community_id: int, openid: str) -> Member | None:
    return db.session.scalar(
        sa.select(Member).where(Member.community_id == community_id, Member.wechat_openid == openid)
    )


def _link_openid(member: Member, application: Application) -> None:
    """Remember the openid WeChat verified for this application: by the join's silent
    OAuth, or when it was paid by JSAPI."""
    if member.wechat_openid:
        return
    openid = application.wechat_openid
    if openid is None and application.order_id is not None:
        order = db.session.get(Order, application.order_id)
        openid = next(
            (p.provider_data["openid"] for p in order.payments if p.provider_data.get("openid")),
            None,
        )
    if openid and find_member_by_openid(member.community_id, openid) is None:
        member.wechat_openid = openid


def give_staff_number(member: Member, *, actor: str, now: datetime | None = None) -> str:
    """Number a member in the community's staff series (once), the way member numbers
    are allocated: one UPDATE … RETURNING, so never twice the same."""
    if member.staff_number is not None:
        raise JoinRefused(_("They have a staff number already"))
    number, pattern = db.session.execute(
        sa.update(Community)
        .where(Community.id == member.community_id)
        .values(last_staff_number=Community.last_staff_number + 1)
        .returning(Community.last_staff_number, Community.staff_number_pattern)
    ).one()
    member.staff_number, member.staff_number_label = number, format_member_number(pattern, number)
    audit.record(
        "member.staff_numbered",
        member,
        actor=actor,
        data={"staff_number": member.staff_number_label},
        now=now,
    )
    return member.staff_number_label


def hold_admissions(community_id: int) -> None:
    """Take the community's row lock, the one the member number's draw takes, before
    reading whether an applicant is a member already: two applications of one person paid
    at once then make one member (the second finds the first), not two with two numbers.
    On PostgreSQL; SQLite's writers hold its write lock for their whole transaction."""
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_HOLD_ADMISSIONS, {"community_id": community_id})


def allocate_member_number(community_id: int) -> tuple[int, str]:
    """The community's next member number and its label.

    One UPDATE … RETURNING: the row stays locked until the transaction ends, so concurrent
    admissions queue and get consecutive numbers; a rollback gives the number back, so
    there are no gaps.
    """
    number, pattern = (
        db.session.connection().execute(_NEXT_MEMBER_NUMBER, {"community_id": community_id}).one()
    )
    _keep_loaded_in_step(Community, community_id, last_member_number=number)
    return number, format_member_number(pattern, number)


def give_back_member_number(community_id: int) -> None:
    """Give back the number :func:`allocate_member_number` drew in this transaction, found
    not to be needed (the payer was a member already). The row is still locked by the
    draw: nobody drew another since, so the next admission gets this one and no gap is
    left."""
    (number,) = (
        db.session.connection().execute(_MEMBER_NUMBER_BACK, {"community_id": community_id}).one()
    )
    _keep_loaded_in_step(Community, community_id, last_member_number=number)


def seats_taken(group_ids: list[int]) -> dict[int, int]:
    """Live invitations per group: the seats taken (see :attr:`Group.seats_taken`)."""
    rows = db.session.execute(sa.select(Group.id, Group.seats_taken).where(Group.id.in_(group_ids)))
    return dict(rows.all())


def _first_group_with_room(tier_id: int, *, now: datetime) -> Group | None:
    """The tier's group a new member is seated in (see
    :func:`~membership.live_codes.choose_group`), its row locked while we take it: one
    read of the groups' seat counters, however many members they have had."""
    session = db.session()
    if any(isinstance(row, Invitation) for row in (*session.new, *session.dirty)):
        session.flush()  # the seats are counted as invitations are written
    with session.no_autoflush:  # nothing else this transaction changed bears on seats
        groups = session.scalars(_TIER_GROUPS_LOCKED, {"tier_id": tier_id}).all()
    group = choose_group(groups, {g.id: g.seats_taken for g in groups}, now=now)
    if group is not None:
        tell_expired(group, now=now)
    return group


def issue_invitation(membership: Membership, *, actor: str, now: datetime) -> Invitation:
    """An invitation for the membership's member to the first of its tier's groups with
    room; when every group is full the invitation waits for admins to add room."""
    group = _first_group_with_room(membership.tier.id, now=now)  # tier_id unset until a flush
    invitation = Invitation(
        token=new_token(24),
        member=membership.member,
        membership=membership,
        group=group,
        status=InvitationStatus.ISSUED if group else InvitationStatus.WAITING,
        created_at=now,
        issued_at=now if group else None,
    )
    db.session.add(invitation)
    if group is not None:
        queue_platform_task(invitation, TaskAction.GRANT, now=now)
    audit.record(
        f"invitation.{invitation.status}",
        invitation,
        actor=actor,
        data={"group": group.name if group else None},
        now=now,
    )
    return invitation


def waiting_invitations(community_id: int) -> list[Invitation]:
    """The community's invitations waiting for a seat, oldest first."""
    return list(
        db.session.scalars(
            sa.select(Invitation)
            .join(Member)
            .where(
                Member.community_id == community_id,
                Invitation.status == InvitationStatus.WAITING,
            )
            .order_by(Invitation.id)
        )
    )


def place_waiting_invitations(community: Community, *, actor: str, now: datetime) -> int:
    """Give waiting invitations a seat where one has opened, oldest first. Returns how
    many were placed."""
    placed = 0
    for invitation in waiting_invitations(community.id):
        group = _first_group_with_room(invitation.membership.tier_id, now=now)
        if group is None:
            continue
        invitation.group = group
        invitation.status = InvitationStatus.ISSUED
        invitation.issued_at = now
        queue_platform_task(invitation, TaskAction.GRANT, now=now)
        db.session.flush()
        audit.record(
            "invitation.issued", invitation, actor=actor, data={"group": group.name}, now=now
        )
        placed += 1
    return placed
