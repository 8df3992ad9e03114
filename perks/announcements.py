"""Announcements, and the one way perks tell many members something: the members an
eligibility rule selects (read as plain columns, so ten thousand take a moment, leaving out
those who unsubscribed), the routes each is reached by, and one message per member queued
in one bulk insert that a second run adds nothing to. Course launches use it too.

Nothing is sent here: the outbox's worker sends. Functions here flush but never commit;
the request or command that calls them commits.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from flask import url_for
from flask_babel import gettext as _

from core import audit, outbox
from core.db import db
from core.outbox import MessageKind, OutboxMessage, OutboxStatus
from core.security import sign
from membership.models import ContactKind, Member, Membership, MembershipStatus
from membership.services import member_routes
from perks.eligibility import Standing, is_eligible, standings_of
from perks.models import Announcement, EligibilityRule, Unsubscribe

#: How many selected members the preview names.
SAMPLE_SIZE = 5


@dataclass(frozen=True, slots=True)
class _Term:
    """A membership, as :func:`~perks.eligibility.standings_of` reads it."""

    tier_id: int
    status: MembershipStatus
    starts_at: datetime


@dataclass(slots=True)
class Recipient:
    """A member as eligibility and messaging read them: the columns that
    :func:`~perks.eligibility.standings_of`, :func:`~perks.eligibility.is_eligible` and
    :func:`~membership.services.member_routes` look at, without loading a :class:`Member`
    per person."""

    id: int
    display_name: str
    number: int | None
    number_label: str | None
    staff_number: int | None
    contact_kind: ContactKind
    contact_value: str
    wechat_openid: str | None
    #: The language they chose (None: their community's).
    locale: str | None
    memberships: list[_Term] = field(default_factory=list)


def selected_members(rule: EligibilityRule, community_id: int, *, now: datetime) -> list[Standing]:
    """The standings (their ``member`` a :class:`Recipient`) of the members of
    ``community_id`` that ``rule`` selects, by member id, leaving out those who
    unsubscribed. A few queries however many members; the rule is the one perks apply
    (:func:`~perks.eligibility.is_eligible`)."""
    unsubscribed = sa.select(Unsubscribe.member_id)
    members = {
        row.id: Recipient(*row)
        for row in db.session.execute(
            sa.select(
                Member.id,
                Member.display_name,
                Member.number,
                Member.number_label,
                Member.staff_number,
                Member.contact_kind,
                Member.contact_value,
                Member.wechat_openid,
                Member.locale,
            )
            .where(Member.community_id == community_id, Member.id.not_in(unsubscribed))
            .order_by(Member.id)
        )
    }
    terms = db.session.execute(
        sa.select(Membership.member_id, Membership.tier_id, Membership.status, Membership.starts_at)
        .join(Member, Member.id == Membership.member_id)
        .where(Member.community_id == community_id)
        .order_by(Membership.id)
    )
    for member_id, tier_id, status, starts_at in terms:
        if member_id in members:
            members[member_id].memberships.append(_Term(tier_id, status, starts_at))
    standings = standings_of(list(members.values()), now=now)  # type: ignore[arg-type]
    return [s for s in standings if is_eligible(rule, s)]


def unsubscribe_links() -> Callable[[int], str]:
    """The link at the end of every announcement, by member id: it stops announcements to
    the member. The address is built once, only the signed token per member (building the
    whole URL per member took most of the time of queueing 10,000)."""
    placeholder = "-"
    prefix = url_for("perks.unsubscribe_page", token=placeholder, _external=True)
    prefix = prefix.removesuffix(placeholder)
    return lambda member_id: prefix + sign("unsubscribe", member_id)


def message_key(source: str, source_id: int, member_id: int) -> str:
    """The outbox dedupe key of what ``source`` (``announcement``, ``course``) number
    ``source_id`` tells one member: each member is queued once per source."""
    return f"{source}:{source_id}:member:{member_id}"


def messages_of(source: str, source_id: int) -> sa.ColumnElement[bool]:
    """Selects the outbox messages of one announcement or course launch."""
    return OutboxMessage.dedupe_key.like(f"{source}:{source_id}:member:%")


def message_row(
    member: Recipient, *, subject: str, body: str, key: str, params: dict[str, str], link: str
) -> dict | None:
    """The outbox row telling ``member``, the unsubscribe ``link`` after ``body``; None
    when no route reaches them. Called inside :func:`core.outbox.written_in` the member's
    language, which the unsubscribe line is written in."""
    routes = member_routes(member)  # type: ignore[arg-type]  # reads the same attributes
    if not routes:
        return None
    return {
        "kind": MessageKind.ANNOUNCEMENT,
        "routes": routes,
        "subject": subject,
        "body": body + "\n" + _("Unsubscribe: %(link)s", link=link),
        "params": {**params, "unsubscribe": link},
        "member_id": member.id,
        "dedupe_key": key,
    }


@dataclass(frozen=True, slots=True)
class Preview:
    """Who an announcement would reach if sent now."""

    #: Selected members with a route: one message each.
    count: int
    #: Selected members no route reaches (a WeChat ID alone): they will not get it.
    unreachable: int
    #: A few of those it reaches, by member id.
    sample: list[Recipient]


def preview(announcement: Announcement, *, now: datetime) -> Preview:
    """The recipients the announcement's rule selects now (read only)."""
    selected = [
        s.member for s in selected_members(announcement, announcement.community_id, now=now)
    ]
    reached = [m for m in selected if member_routes(m)]  # type: ignore[arg-type]
    sample = random.sample(reached, min(SAMPLE_SIZE, len(reached)))
    return Preview(len(reached), len(selected) - len(reached), sorted(sample, key=lambda m: m.id))


def send(announcement: Announcement, *, actor: str, now: datetime) -> int:
    """Queue the announcement to each member its rule selects now and a route reaches, in
    one bulk insert. Members queued by an earlier send are not queued again, so sending
    twice adds only members selected since. Sets ``sent_at`` the first time, counts the
    recipients, audits. Returns how many messages were queued now."""
    _lock(announcement)
    community = announcement.community
    # What an SMS or WeChat template carries instead of the body (core.sms names them); the
    # link is the member's page until members have a page to read announcements on.
    params = {
        "community": community.name,
        "title": announcement.title,
        "link": url_for("membership.me", _external=True),
    }
    link = unsubscribe_links()
    # Each member reads it in their language (theirs, else the community's): composed
    # once per language, not once per member.
    by_language: dict[str | None, list[Recipient]] = defaultdict(list)
    for standing in selected_members(announcement, announcement.community_id, now=now):
        by_language[standing.member.locale or community.locale].append(standing.member)
    rows = []
    for language, members in by_language.items():
        with outbox.written_in(language):
            subject = _(
                "%(community)s: %(title)s", community=community.name, title=announcement.title
            )
            for member in members:
                row = message_row(
                    member,
                    subject=subject,
                    body=announcement.body,
                    key=message_key("announcement", announcement.id, member.id),
                    params=params,
                    link=link(member.id),
                )
                if row is not None:
                    rows.append(row)
    rows.sort(key=lambda row: row["member_id"])
    queued = outbox.enqueue_many(rows, now=now)
    if announcement.sent_at is None:
        announcement.sent_at = now
    announcement.recipients = Announcement.recipients + queued
    audit.record(
        "announcement.sent",
        announcement,
        actor=actor,
        data={"selected": len(rows), "queued": queued},
        now=now,
    )
    return queued


def _lock(announcement: Announcement) -> None:
    """Hold the announcement's row (on PostgreSQL) until the commit, so two sends of it at
    once (a double click) queue one after the other and count what they queued exactly."""
    db.session.execute(
        sa.select(Announcement.id).where(Announcement.id == announcement.id).with_for_update()
    )


@dataclass(frozen=True, slots=True)
class Progress:
    queued: int  #: waiting for the worker, or being sent
    sent: int
    failed: int


def progress(announcement: Announcement) -> Progress:
    """How the announcement's messages stand in the outbox."""
    counts = dict(
        db.session.execute(
            sa.select(OutboxMessage.status, sa.func.count())
            .where(messages_of("announcement", announcement.id))
            .group_by(OutboxMessage.status)
        ).all()
    )
    return Progress(
        queued=counts.get(OutboxStatus.PENDING, 0) + counts.get(OutboxStatus.SENDING, 0),
        sent=counts.get(OutboxStatus.SENT, 0),
        failed=counts.get(OutboxStatus.FAILED, 0),
    )
