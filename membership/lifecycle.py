"""The life of memberships after joining: activity, purges of the inactive ("大清洗"), and
expiry of memberships with a term. Functions flush but never commit."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import sqlalchemy as sa

from core import audit
from core.clock import utcnow
from core.db import db
from membership.models import Community, Member, Membership, MembershipStatus, Purge
from membership.services import end_membership


class PurgeRefused(Exception):
    """The message says why, Chinese first; nothing changed."""


def identifiers_from_csv(data: bytes) -> list[str]:
    """The first column of each row of an uploaded CSV (a header row is harmless: it
    matches nobody and is listed as unmatched)."""
    text = data.decode("utf-8-sig", errors="replace")
    return [row[0].strip() for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]


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
            .order_by(Member.number.is_(None), Member.number, Member.id)
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
        raise PurgeRefused("这次清退已经执行过 · This purge was run already")
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
        sa.select(Membership).where(
            Membership.status == MembershipStatus.ACTIVE, Membership.ends_at <= now
        )
    ).all()
    for membership in due:
        end_membership(membership, MembershipStatus.EXPIRED, reason="term", actor="system", now=now)
    return len(due)
