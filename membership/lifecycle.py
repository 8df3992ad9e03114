"""The life of memberships after joining: activity, purges of the inactive ("大清洗"),
renewal, reminders and expiry of memberships with a term. Functions flush but never
commit."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import joinedload, selectinload

from core import audit
from core.clock import utcnow
from core.db import db
from core.forms import csv_delimiter, uploaded_text
from core.outbox import MessageKind
from membership.models import (
    LISTED_ORDER,
    Application,
    ApplicationStatus,
    Community,
    Member,
    Membership,
    MembershipStatus,
    Purge,
    Tier,
    TierKind,
)
from membership.renewal import renewable, renewal_opens_at, renewal_price
from membership.services import (
    JoinRefused,
    allocate_member_number,
    end_membership,
    follow_up_application,
    issue_invitation,
    message_member,
    speaking_to,
)
from payments.models import Order, OrderStatus
from payments.services import create_order, withdraw_order


class PurgeRefused(Exception):
    """The message says why, in the reader's language; nothing changed."""


def identifiers_from_csv(data: bytes) -> list[str]:
    """The first column of each row of an uploaded CSV (a header row is harmless: it
    matches nobody and is listed as unmatched). Raises
    :class:`~core.forms.UnreadableFile`."""
    text = uploaded_text(data)
    rows = csv.reader(io.StringIO(text), delimiter=csv_delimiter(text))
    return [row[0].strip() for row in rows if row and row[0].strip()]


def mark_active(
    community: Community, identifiers: list[str], *, actor: str, now: datetime | None = None
) -> tuple[list[Member], list[str]]:
    """Mark the members named by number (``0042`` or ``42``) or exact display name as
    active now. Returns those marked and the identifiers that matched nobody."""
    now = now or utcnow()
    members = db.session.scalars(sa.select(Member).where(Member.community_id == community.id))
    by_key: dict[str, list[Member]] = {}
    for member in members:
        keys = {member.display_name}
        if member.number is not None:
            keys |= {member.number_label, str(member.number)}
        for key in keys:
            by_key.setdefault(key, []).append(member)
    marked: dict[int, Member] = {}
    unmatched = []
    for identifier in identifiers:
        found = by_key.get(identifier.strip().lstrip("#"))
        if not found:
            unmatched.append(identifier)
        for member in found or ():
            marked[member.id] = member
    for member in marked.values():
        member.last_active_at = now
    if marked:
        audit.record(
            "community.activity_marked",
            community,
            actor=actor,
            data={"members": sorted(marked), "unmatched": len(unmatched)},
            now=now,
        )
    return list(marked.values()), unmatched


def purge_candidates(community: Community, inactive_since: datetime) -> list[Membership]:
    """Active memberships of members not seen active since ``inactive_since`` (members
    never marked count from when they joined)."""
    last_seen = sa.func.coalesce(Member.last_active_at, Member.created_at)
    return list(
        db.session.scalars(
            sa.select(Membership)
            .join(Member, Membership.member_id == Member.id)
            .where(
                Member.community_id == community.id,
                Membership.status == MembershipStatus.ACTIVE,
                last_seen < inactive_since,
            )
            .order_by(*LISTED_ORDER)
        )
    )


def run_purge(
    community: Community, inactive_since: datetime, *, actor: str, now: datetime | None = None
) -> Purge:
    """End the access of every purge candidate and record the purge. A purge with the same
    cut-off is refused: running it twice changes nothing."""
    now = now or utcnow()
    done = db.session.scalar(
        sa.select(Purge).where(
            Purge.community_id == community.id, Purge.inactive_since == inactive_since
        )
    )
    if done is not None:
        raise PurgeRefused(_l("This purge was run already"))
    candidates = purge_candidates(community, inactive_since)
    for membership in candidates:
        end_membership(membership, MembershipStatus.PURGED, reason="purge", actor=actor, now=now)
    purge = Purge(
        community_id=community.id,
        inactive_since=inactive_since,
        run_by=actor,
        run_at=now,
        purged_count=len(candidates),
    )
    db.session.add(purge)
    audit.record(
        "community.purged",
        community,
        actor=actor,
        data={"inactive_since": inactive_since.isoformat(), "count": len(candidates)},
        now=now,
    )
    return purge


def expire_memberships(*, now: datetime | None = None) -> int:
    """End memberships whose term ran out. Returns how many."""
    now = now or utcnow()
    due = db.session.scalars(
        sa.select(Membership)
        .where(Membership.status == MembershipStatus.ACTIVE, Membership.ends_at <= now)
        .options(joinedload(Membership.member).selectinload(Member.invitations))
    ).all()
    for membership in due:
        end_membership(membership, MembershipStatus.EXPIRED, reason="term", actor="system", now=now)
    return len(due)


class RenewalRefused(Exception):
    """The message says why, in the reader's language; nothing changed."""


def start_renewal(
    membership: Membership, *, now: datetime | None = None, with_coupon: bool = False
) -> Application:
    """The renewal a member pays to extend ``membership``: its order is at the price of the
    band ``now`` falls in (:func:`membership.renewal.renewal_price`), which it keeps however
    late it is paid. Asking again while one waits for payment gives that one back (a
    double click opens one order), unless its price is no longer the band's (the term
    ended meanwhile, the admins changed the price) or a coupon is typed (``with_coupon``)
    while a payment attempt is open on it: that order is withdrawn and a new one made, so
    the member pays what the page said.

    Refused before the tier's renewal window opens, and for a membership that is neither
    current nor expired (see :func:`membership.renewal.renewable`). A tier that costs
    nothing to renew is refused rather than extended for free: its term is a trial or a
    lobby stay, which the member may join again once it ends."""
    now = now or utcnow()
    tier = membership.tier
    if membership.ends_at is None or not tier.duration_days:
        raise RenewalRefused(_l("Only a membership with a term can be renewed"))
    if tier.renewal_money.amount == 0:
        raise RenewalRefused(_l("A free tier is not renewed: join it again, free, once it ends"))
    if not renewable(membership, now):
        if membership.status is MembershipStatus.ACTIVE:
            opens = renewal_opens_at(membership).astimezone(ZoneInfo(tier.community.time_zone))
            raise RenewalRefused(_l("Renewal opens on %(date)s", date=opens.strftime("%Y-%m-%d")))
        raise RenewalRefused(_l("This membership can no longer be renewed"))
    waiting = db.session.scalar(
        sa.select(Application)
        .where(
            Application.renews_membership_id == membership.id,
            Application.status == ApplicationStatus.AWAITING_PAYMENT,
        )
        .order_by(Application.id.desc())  # the latest: those before it were given up
        .limit(1)
    )
    member = membership.member
    actor = f"member:{member.id}"
    band = renewal_price(membership, now)
    if waiting is not None:
        order = db.session.get(Order, waiting.order_id)
        if order.status is OrderStatus.OPEN and order.expires_at > now:
            if order.list_amount != band.price.amount:
                withdraw_order(order, reason="price_changed", actor=actor, now=now)
            elif with_coupon and order.payments:
                withdraw_order(order, reason="coupon", actor=actor, now=now)
            else:
                return waiting
    with speaking_to(member):
        description = _(
            "%(community)s · %(tier)s renewal", community=tier.community.name, tier=tier.name
        )
    order = create_order(
        band.price,
        description,
        community_id=tier.community_id,
        product=tier.name,
        member_id=member.id,
        actor=actor,
        now=now,
    )
    db.session.flush()
    renewal = follow_up_application(
        member,
        tier,
        member=member,
        status=ApplicationStatus.AWAITING_PAYMENT,
        now=now,
        renews=membership,
        order_id=order.id,
    )
    audit.record(
        "membership.renewal_started",
        membership,
        actor=actor,
        data={"band": band.band.value, "percent": band.percent, "price": str(band.price)},
        now=now,
    )
    return renewal


def send_reminders(*, now: datetime | None = None) -> list[int]:
    """Queue a reminder for each membership ending within its community's reminder days,
    once per end date. Returns the outbox messages queued."""
    now = now or utcnow()
    due = db.session.execute(
        sa.select(Membership, Community)
        .join(Member, Membership.member_id == Member.id)
        .join(Community, Member.community_id == Community.id)
        .where(
            Membership.status == MembershipStatus.ACTIVE,
            Membership.ends_at.is_not(None),
            Membership.ends_at > now,
        )
        .options(joinedload(Membership.member), joinedload(Membership.tier))
        .order_by(Membership.ends_at, Membership.id)
    ).all()
    messages = []
    for membership, community in due:
        soon = membership.ends_at - timedelta(days=community.reminder_days) <= now
        if not soon or membership.reminded_for_end_at == membership.ends_at:
            continue
        member = membership.member
        local_end = membership.ends_at.astimezone(ZoneInfo(community.time_zone))
        with speaking_to(member):
            subject = _("%(community)s: your membership ends soon", community=community.name)
            body = _(
                "Your %(tier)s membership ends on %(date)s. Renewing now costs %(price)s.",
                tier=membership.tier.name,
                date=local_end.strftime("%Y-%m-%d"),
                price=str(renewal_price(membership, now).price),
            )
        messages.append(
            message_member(
                member,
                MessageKind.REMINDER,
                subject,
                body,
                params={"community": community.name, "date": f"{local_end:%Y-%m-%d}"},
                now=now,
            )
        )
        membership.reminded_for_end_at = membership.ends_at
        audit.record("membership.reminded", membership, actor="system", now=now)
    return messages


def open_season(
    season: Tier, from_tier: Tier, *, free: bool, actor: str, now: datetime | None = None
) -> int:
    """A new season: every current member of ``from_tier`` is invited to ``season``'s
    groups, free (a membership of ``season`` and an invitation at once) or by a message
    asking them to pay the season's fee. Members holding ``season`` already are skipped.
    Returns how many were invited."""
    now = now or utcnow()
    community = season.community
    members = (
        db.session.scalars(
            sa.select(Member)
            .join(Membership, Membership.member_id == Member.id)
            .where(Membership.tier_id == from_tier.id, Membership.status == MembershipStatus.ACTIVE)
            .options(selectinload(Member.memberships))
            .order_by(Member.id)
        )
        .unique()
        .all()
    )
    invited = 0
    for member in members:
        if member.holds(season.id):
            continue
        if free:
            membership = Membership(
                member=member,
                tier=season,
                status=MembershipStatus.ACTIVE,
                starts_at=now,
                ends_at=now + timedelta(days=season.duration_days)
                if season.duration_days
                else None,
            )
            db.session.add(membership)
            issue_invitation(membership, actor=actor, now=now)
            link = url_for("membership.login", slug=community.slug, _external=True)
            with speaking_to(member):
                body = _(
                    "%(community)s has opened %(season)s. Your invitation to its group is "
                    "ready: log in to see it: %(link)s",
                    community=community.name,
                    season=season.name,
                    link=link,
                )
        else:
            link = url_for(
                "membership.join", slug=community.slug, tier_code=season.code, _external=True
            )
            with speaking_to(member):
                body = _(
                    "%(community)s has opened %(season)s, for a fee of %(price)s. Log in to "
                    "join it: %(link)s",
                    community=community.name,
                    season=season.name,
                    price=str(season.price_money),
                    link=link,
                )
        message_member(
            member,
            MessageKind.NOTICE,
            f"{community.name}: {season.name}",
            body,
            params={"community": community.name, "link": link},
            now=now,
        )
        invited += 1
    audit.record(
        "tier.season_opened",
        season,
        actor=actor,
        data={"from_tier": from_tier.code, "free": free, "invited": invited},
        now=now,
    )
    return invited


def grant_by_hand(
    member: Member, tier: Tier, *, reason: str, actor: str, now: datetime | None = None
) -> Membership:
    """An admin gives a member a tier without payment (a speaker, a prize, a mistake put
    right): a membership and an invitation. Refused if they hold it already."""
    now = now or utcnow()
    if tier.community_id != member.community_id:
        raise JoinRefused(_l("Not this community's tier"))
    if member.holds(tier.id):
        raise JoinRefused(_l("They hold this tier already"))
    if tier.kind is TierKind.PAID and member.number is None:
        member.number, member.number_label = allocate_member_number(member.community_id)
    membership = Membership(
        member=member,
        tier=tier,
        status=MembershipStatus.ACTIVE,
        starts_at=now,
        ends_at=now + timedelta(days=tier.duration_days) if tier.duration_days else None,
    )
    db.session.add(membership)
    audit.record(
        "membership.granted",
        member,
        actor=actor,
        data={"tier": tier.code, "reason": reason},
        now=now,
    )
    issue_invitation(membership, actor=actor, now=now)
    return membership


def end_by_hand(
    membership: Membership, *, reason: str, actor: str, now: datetime | None = None
) -> None:
    """An admin ends a membership; its invitations are revoked."""
    if membership.status not in (MembershipStatus.ACTIVE, MembershipStatus.SUSPENDED):
        raise JoinRefused(_l("This membership has ended already"))
    end_membership(
        membership, MembershipStatus.ENDED, reason=reason, actor=actor, now=now or utcnow()
    )
