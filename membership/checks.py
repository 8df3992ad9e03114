"""Membership's consistency checks (see :mod:`core.checks`): member and staff numbers are
unique in their community and known to its counters (or they would be given out again),
each group's seat counter agrees with its live invitations and none holds more than its
seats, the daily figures agree with the rows they count, and the platform-call queue is
not stuck."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from core.checks import STUCK_AFTER, consistency_check
from core.db import db
from membership import figures
from membership.live_codes import seats_of
from membership.models import (
    LIVE_INVITATION_STATUSES,
    Community,
    Group,
    Invitation,
    Member,
    PlatformTask,
    TaskStatus,
)

#: Each number series: the member's column and the community's counter of it.
_SERIES = (
    ("member number", Member.number, Community.last_member_number),
    ("staff number", Member.staff_number, Community.last_staff_number),
)


@consistency_check("member numbers are unique and counted")
def numbers_unique(_now: datetime) -> Iterable[str]:
    """No number twice in a community's series, none beyond its counter."""
    for what, number, counter in _SERIES:
        twice = db.session.execute(
            sa.select(Member.community_id, number, sa.func.count())
            .where(number.is_not(None))
            .group_by(Member.community_id, number)
            .having(sa.func.count() > 1)
        )
        for community_id, value, times in twice:
            yield f"community {community_id}: {what} {value} is held by {times} members"
        beyond = db.session.execute(
            sa.select(Member.community_id, sa.func.max(number), counter)
            .join(Community, Community.id == Member.community_id)
            .group_by(Member.community_id, counter)
            .having(sa.func.max(number) > counter)
        )
        for community_id, highest, last in beyond:
            yield (
                f"community {community_id}: {what} {highest} was given but the counter "
                f"is at {last}; the next ones would be given twice"
            )


@consistency_check("group seats agree with invitations")
def seats_agree(_now: datetime) -> Iterable[str]:
    """Live invitations name a group; each group's seat counter is its live invitations,
    and they are no more than its seats."""
    orphans = db.session.scalars(
        sa.select(Invitation.id).where(
            Invitation.status.in_(LIVE_INVITATION_STATUSES), Invitation.group_id.is_(None)
        )
    )
    for invitation_id in orphans:
        yield f"invitation {invitation_id} is live but names no group"
    live = (
        sa.select(sa.func.count(Invitation.id))
        .where(Invitation.group_id == Group.id, Invitation.status.in_(LIVE_INVITATION_STATUSES))
        .scalar_subquery()
    )
    for group, invitations in db.session.execute(sa.select(Group, live).order_by(Group.id)):
        if group.seats_taken != invitations:
            yield (
                f"group {group.id} ({group.name}): its seat counter says {group.seats_taken}, "
                f"it holds {invitations} live invitations"
            )
        if invitations > seats_of(group):
            yield (
                f"group {group.id} ({group.name}) holds {invitations} live invitations "
                f"for {seats_of(group)} seats"
            )


@consistency_check("daily figures agree with the rows they count")
def figures_agree(_now: datetime) -> Iterable[str]:
    """Each community's daily figures (revenue, joined, ended, the funnel) are what the
    ledger, memberships, events and applications say, day by day in its time zone; its
    paying members are those holding a current paid membership (``flask figures-rebuild``
    puts them right)."""
    yield from figures.disagreements(db.session)


@consistency_check("platform tasks are not stuck")
def platform_tasks_not_stuck(now: datetime) -> Iterable[str]:
    """Pending platform calls long past due: no worker is draining the queue."""
    stuck = db.session.execute(
        sa.select(PlatformTask.id, PlatformTask.action, PlatformTask.next_attempt_at).where(
            PlatformTask.status == TaskStatus.PENDING,
            PlatformTask.next_attempt_at < now - STUCK_AFTER,
        )
    )
    for task_id, action, due in stuck:
        yield f"platform task {task_id} ({action}) is pending, due since {due:%Y-%m-%d %H:%M} UTC"
