"""Perks: what a member may redeem, and redeeming it.

Functions here flush but never commit; the request that calls them commits. A refusal
raises :class:`PerkRefused` after changing nothing the caller would keep: the caller rolls
back, as it does for any error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask_babel import gettext as _
from sqlalchemy.orm import selectinload

from core import audit
from core.db import db
from core.events import record_event
from membership.models import Member
from perks.coupons import grant_coupon
from perks.courses import enrol_free
from perks.eligibility import Condition, Standing, conditions
from perks.models import Perk, PerkKind, Redemption


class PerkRefused(Exception):
    """The member cannot redeem this perk now; the message says why, Chinese first."""


@dataclass(frozen=True, slots=True)
class PerkView:
    """A perk as one member sees it."""

    perk: Perk
    conditions: list[Condition]
    redeemed: int

    @property
    def eligible(self) -> bool:
        return all(c.met for c in self.conditions)

    @property
    def can_redeem(self) -> bool:
        left = self.perk.left
        return (
            self.eligible
            and self.redeemed < self.perk.per_member_limit
            and (left is None or left > 0)
        )


def perks_for(standing: Standing) -> list[PerkView]:
    """The community's active perks, each with the member's standing against its rule and
    how often they redeemed it: the eligible ones first."""
    member = standing.member
    perks = db.session.scalars(
        sa.select(Perk)
        .where(Perk.community_id == member.community_id, Perk.active)
        .order_by(Perk.id)
    ).all()
    redeemed = dict(
        db.session.execute(
            sa.select(Redemption.perk_id, sa.func.count())
            .where(Redemption.member_id == member.id)
            .group_by(Redemption.perk_id)
        ).all()
    )
    views = [PerkView(p, conditions(p, standing), redeemed.get(p.id, 0)) for p in perks]
    return sorted(views, key=lambda v: not v.eligible)


def redeem(perk: Perk, standing: Standing, *, now: datetime) -> Redemption:
    """``standing``'s member redeems ``perk``: one of its stock is taken and what it gives
    is given (a coupon issued, a course place, a link shown). Raises :class:`PerkRefused`.

    The stock is taken by one conditional UPDATE, which also locks the perk's row until the
    commit, so the member's earlier redemptions are counted with no one else redeeming it
    meanwhile: stock and per-member limits hold with any number of redeemers at once.
    """
    member = standing.member
    if not perk.active or perk.community_id != member.community_id:
        raise PerkRefused(_("This perk is no longer offered"))
    unmet = [c.text for c in conditions(perk, standing) if not c.met]
    if unmet:
        raise PerkRefused(_("You do not qualify yet: %(unmet)s", unmet=_("; ").join(unmet)))
    taken = db.session.execute(
        sa.update(Perk)
        .where(
            Perk.id == perk.id,
            sa.or_(Perk.stock.is_(None), Perk.redeemed_count < Perk.stock),
        )
        .values(redeemed_count=Perk.redeemed_count + 1)
        .returning(Perk.redeemed_count)
        .execution_options(synchronize_session=False)
    ).scalar()
    if taken is None:
        raise PerkRefused(_("None left"))
    before = db.session.scalar(
        sa.select(sa.func.count(Redemption.id)).where(
            Redemption.perk_id == perk.id, Redemption.member_id == member.id
        )
    )
    if before >= perk.per_member_limit:
        raise PerkRefused(_("You have redeemed this perk already"))
    redemption = Redemption(perk=perk, member=member, created_at=now)
    db.session.add(redemption)
    if perk.kind is PerkKind.COUPON and perk.coupon is not None:
        grant_coupon(perk.coupon, member, source=f"perk:{perk.id}", now=now)
    elif perk.kind is PerkKind.COURSE and perk.course is not None:
        enrol_free(perk.course, member, source=f"perk:{perk.id}", now=now)
    audit.record(
        "perk.redeemed",
        perk,
        actor=f"member:{member.id}",
        data={"member": member.id, "redeemed_count": taken},
        now=now,
    )
    record_event(
        member.community_id,
        "perk.redeemed",
        {"perk": perk.id, "member": member.id, "redemption": redemption.id},
        now=now,
    )
    return redemption


def redemptions_of(member: Member) -> list[Redemption]:
    return db.session.scalars(
        sa.select(Redemption)
        .where(Redemption.member_id == member.id)
        .options(selectinload(Redemption.perk))
        .order_by(Redemption.id.desc())
    ).all()
