"""Whether a member meets an :class:`~perks.models.EligibilityRule`, and why, in words the
member reads on their page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy.orm import selectinload

from core.db import db
from membership.models import Application, Member, MembershipStatus
from payments.models import Order, OrderStatus
from perks.models import EligibilityRule


@dataclass(frozen=True, slots=True)
class Condition:
    met: bool
    #: What the member reads, in the language of the request (or the default outside one).
    text: str


@dataclass(frozen=True, slots=True)
class Standing:
    """What eligibility rules look at, read once per member and page."""

    member: Member
    is_current: bool
    tier_ids: frozenset[int]
    tenure_days: int
    seasons_paid: int

    @property
    def is_staff(self) -> bool:
        return self.member.staff_number is not None


def standing_of(member: Member, *, now: datetime) -> Standing:
    return standings_of([member], now=now)[0]


def standings_of(members: list[Member], *, now: datetime) -> list[Standing]:
    """The standing of each of ``members``, with one query for all their paid seasons
    (load their memberships with them: ``selectinload(Member.memberships)``)."""
    seasons = dict(
        db.session.execute(
            sa.select(Application.member_id, sa.func.count(Application.id))
            .join(Order, Order.id == Application.order_id)
            .where(
                Application.member_id.in_([m.id for m in members]),
                Order.status == OrderStatus.PAID,
            )
            .group_by(Application.member_id)
        ).all()
    )
    standings = []
    for member in members:
        active = [m for m in member.memberships if m.status is MembershipStatus.ACTIVE]
        first = min((m.starts_at for m in member.memberships), default=now)
        standings.append(
            Standing(
                member=member,
                is_current=bool(active),
                tier_ids=frozenset(m.tier_id for m in active),
                tenure_days=max(0, (now - first).days),
                seasons_paid=seasons.get(member.id, 0),
            )
        )
    return standings


def community_standings(community_id: int, *, now: datetime) -> list[Standing]:
    """Every member of a community with their standing, in a few queries however many."""
    members = db.session.scalars(
        sa.select(Member)
        .where(Member.community_id == community_id)
        .options(selectinload(Member.memberships))
        .order_by(Member.id)
    ).all()
    return standings_of(list(members), now=now)


def conditions(rule: EligibilityRule, standing: Standing) -> list[Condition]:
    """Each condition of ``rule`` with whether ``standing`` meets it, being a current
    member first."""
    result = [Condition(standing.is_current, _("A current member"))]
    if rule.tier_id is not None:
        name = rule.tier.name
        result.append(Condition(rule.tier_id in standing.tier_ids, _("Holds %(tier)s", tier=name)))
    if rule.min_tenure_days is not None:
        days = rule.min_tenure_days
        result.append(
            Condition(
                standing.tenure_days >= days,
                ngettext(
                    "A member for %(num)s day or more (you: %(yours)s)",
                    "A member for %(num)s days or more (you: %(yours)s)",
                    days,
                    yours=standing.tenure_days,
                ),
            )
        )
    if rule.max_member_number is not None:
        number = standing.member.number
        top = rule.max_member_number
        result.append(
            Condition(
                number is not None and number <= top,
                _(
                    "Member number %(top)s or lower (yours: %(yours)s)",
                    top=top,
                    yours=standing.member.number_label,
                )
                if standing.member.number_label
                else _("Member number %(top)s or lower (you have none)", top=top),
            )
        )
    if rule.min_seasons_paid is not None:
        seasons = rule.min_seasons_paid
        result.append(
            Condition(
                standing.seasons_paid >= seasons,
                ngettext(
                    "Paid %(num)s time or more (you: %(yours)s)",
                    "Paid %(num)s times or more (you: %(yours)s)",
                    seasons,
                    yours=standing.seasons_paid,
                ),
            )
        )
    if rule.staff_only:
        result.append(Condition(standing.is_staff, _("Staff")))
    return result


def is_eligible(rule: EligibilityRule, standing: Standing) -> bool:
    return all(c.met for c in conditions(rule, standing))
