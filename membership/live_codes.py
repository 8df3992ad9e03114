"""Group QR codes that never go stale: which of a tier's groups a new member is seated in
(one with room and a QR code that still works), and the warnings admins get before a
group's QR code expires, when a member was seated behind an expired one, and when a tier's
groups are nearly full — on the dashboard and by message, each once.

A member's invitation page shows the group's QR image only while it is valid, so it is the
live code: an admin uploading the new QR is all it takes for every member waiting on that
group to see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask_babel import LazyString
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from core.auth import StaffUser, staff_who_can
from core.db import db
from core.outbox import Channel, MessageKind, enqueue_many, written_in
from membership.models import Community, Group
from membership.platforms import PLATFORMS

#: Admins are warned this long before a group's QR code expires.
QR_WARNING = timedelta(days=1)
#: Admins are warned when a tier's groups have no more seats left than this.
SEATS_WARNING = 20
#: Who is told: the staff who may change groups (upload a new QR, add a group).
TOLD_PERMISSION = "community.manage"


def seats_of(group: Group) -> int:
    """Invitations ``group`` can take: its capacity, and for QR-joined WeChat groups no
    more than the 200 members past which their QR code stops working."""
    platform = PLATFORMS.get(group.platform)
    return platform.seats(group.capacity) if platform else group.capacity


def choose_group(groups: Sequence[Group], taken: dict[int, int], *, now: datetime) -> Group | None:
    """The group a new member is seated in: the first of ``groups`` with room whose way in
    works now (a QR image not expired, or a way that is no shared QR: a link, a join way
    of their own); failing that, the first with room at all, whose expired QR admins are
    told to replace (see :func:`tell_expired`). None when all are full."""
    with_room = [g for g in groups if taken.get(g.id, 0) < seats_of(g)]
    return next(
        (g for g in with_room if g.qr_mime is None or g.qr_valid(now)),
        with_room[0] if with_room else None,
    )


@dataclass(frozen=True, slots=True)
class GroupWarning:
    key: str  #: once per key (the outbox's dedupe key, with each recipient's id)
    #: Translated when shown: on the dashboard in its reader's language, in a message in
    #: its recipient's.
    text: LazyString


def group_warnings(
    community: Community, taken: dict[int, int], *, now: datetime
) -> list[GroupWarning]:
    """What admins of ``community`` should act on about its groups now: QR codes expired
    or expiring within :data:`QR_WARNING`, tiers whose groups have at most
    :data:`SEATS_WARNING` seats left. ``taken``: seats taken by group."""
    warnings = []
    for group in community.groups:
        expires = group.qr_expires_at
        if group.qr_mime is None or expires is None or expires - QR_WARNING > now:
            continue
        stamp = expires.isoformat()
        if expires <= now:
            text = _l("The QR code of %(group)s has expired: upload a new one", group=group.name)
            warnings.append(GroupWarning(f"qr-expired:{group.id}:{stamp}", text))
        else:
            text = _l(
                "The QR code of %(group)s expires within a day: upload a new one",
                group=group.name,
            )
            warnings.append(GroupWarning(f"qr-expiring:{group.id}:{stamp}", text))
    for tier in community.tiers:
        if not tier.active or not tier.groups:
            continue
        total = sum(seats_of(g) for g in tier.groups)
        left = total - sum(min(taken.get(g.id, 0), seats_of(g)) for g in tier.groups)
        if left <= SEATS_WARNING:
            text = _l(
                "The groups of %(tier)s have %(left)s seats left: open a new group",
                tier=tier.name,
                left=left,
            )
            # Once per fill-up: adding a group changes the total, and the key with it.
            warnings.append(GroupWarning(f"seats:{tier.id}:{total}", text))
    return warnings


def tell_admins(community: Community, warnings: list[GroupWarning], *, now: datetime) -> int:
    """Message each warning to the staff who can act on it, once per warning and person,
    in the language of their account (queued, not committed). Returns how many messages
    are new."""
    who = staff_who_can(TOLD_PERMISSION, community.id).subquery()
    staff = db.session.execute(
        sa.select(StaffUser.id, StaffUser.email, StaffUser.locale).where(
            StaffUser.id.in_(sa.select(who.c.id))
        )
    ).all()
    rows = []
    for staff_id, email, locale in staff:
        with written_in(locale):
            subject = _("%(community)s: a group needs attention", community=community.name)
            rows.extend(
                {
                    "kind": MessageKind.NOTICE,
                    "routes": [[Channel.EMAIL.value, email]],
                    "subject": subject,
                    "body": str(warning.text),
                    "params": {"community": community.name, "link": ""},
                    "member_id": None,
                    "dedupe_key": f"{warning.key}:{staff_id}"[:120],
                }
                for warning in warnings
            )
    return enqueue_many(rows, now=now)


def tell_expired(group: Group, *, now: datetime) -> None:
    """A member was just seated in ``group`` behind an expired QR code (no group of the
    tier had a valid one): its admins are told, once per expiry. Queued, not committed."""
    if group.qr_mime is None or group.qr_valid(now):
        return
    text = _l(
        "The QR code of %(group)s has expired and new members are waiting: upload a new one",
        group=group.name,
    )
    key = f"qr-expired:{group.id}:{group.qr_expires_at.isoformat()}"
    tell_admins(group.community, [GroupWarning(key, text)], now=now)
