"""A community's revenue export: the ledger's movements for its orders, with the member
number and tier of each (see :mod:`payments.exports`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext

from core.clock import utcnow
from core.db import db
from core.exporters import Exporter
from core.labels import label
from core.money import Money
from membership.models import (
    CONTACT_KIND_WORDS,
    Application,
    Community,
    Member,
    Membership,
    PageVisits,
    Tier,
)
from payments.exports import LedgerQuery, RevenueRows, RevenueTotals
from payments.models import Order, OrderStatus


def day_start(community: Community, day: date) -> datetime:
    """The start of ``day`` in the community's time zone, as aware UTC."""
    return datetime.combine(day, time(), ZoneInfo(community.time_zone)).astimezone(UTC)


def date_presets(today: date) -> list[tuple[str, object, date, date]]:
    """The ranges the export page offers, from ``today`` on the community's calendar: this
    month, last month, this quarter, this year (to today). Each is (key, label, first day,
    last day)."""
    month = today.replace(day=1)
    last_month_end = month - timedelta(days=1)
    quarter = today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1)
    return [
        ("this_month", _l("This month"), month, today),
        ("last_month", _l("Last month"), last_month_end.replace(day=1), last_month_end),
        ("this_quarter", _l("This quarter"), quarter, today),
        ("this_year", _l("This year"), today.replace(month=1, day=1), today),
    ]


def community_revenue(
    community: Community, first_day: date, last_day: date, *, jobs: int = 1
) -> tuple[RevenueRows, RevenueTotals]:
    """The movements of ``first_day`` to ``last_day`` (inclusive, community time), and the
    totals they add up to (summed by ``jobs`` processes on SQLite)."""
    query = LedgerQuery(
        community_id=community.id,
        start=day_start(community, first_day),
        end=day_start(community, last_day + timedelta(days=1)),
        time_zone=community.time_zone,
        details=[(_l("Member number"), Member.number_label)],
        joins=lambda select: select.outerjoin(Member, Member.id == Order.member_id),
    )
    totals = RevenueTotals(query, jobs=jobs)
    return RevenueRows(query, totals), totals


class MembersExport(Exporter):
    """Members as the admin list filters them: number, name, contact, memberships, in the
    reader's language (contact kinds as the import reads them back)."""

    title = _l("Members")
    headers = (
        _l("Number"),
        lazy_pgettext("member", "Name"),
        _l("Contact kind"),
        _l("Contact"),
        _l("Tiers"),
        lazy_pgettext("member", "Joined"),
        _l("Last active"),
    )

    def __init__(self, query: sa.Select, time_zone: str) -> None:
        self.query, self.zone = query, ZoneInfo(time_zone)

    def rows(self) -> Iterator[list[object]]:
        for member in db.session.scalars(self.query.execution_options(yield_per=1000)):
            yield [
                member.number_label or "",
                member.display_name,
                str(CONTACT_KIND_WORDS[member.contact_kind]),
                member.contact_value,
                "; ".join(f"{m.tier.name}:{label(m.status)}" for m in member.memberships),
                member.created_at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M"),
                member.last_active_at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M")
                if member.last_active_at
                else "",
            ]


#: Days the community page's revenue chart shows.
CHART_DAYS = 30


def community_stats(community: Community, *, today: date | None = None) -> dict:
    """What the community page shows at a glance: revenue per day over the last 30 days
    (an SVG bar chart's bars), members by tier and state, and the join funnel (join-page
    visits, applications, orders, paid)."""
    today = today or utcnow().astimezone(ZoneInfo(community.time_zone)).date()
    first = today - timedelta(days=CHART_DAYS - 1)
    _, totals = community_revenue(community, first, today)
    by_day = {
        day: amount
        for (day, currency), amount in totals.by_day().items()
        if currency == community.currency
    }
    days = [first + timedelta(days=i) for i in range(CHART_DAYS)]
    values = [Money(by_day.get(day.isoformat(), 0), community.currency) for day in days]
    top = max([*(value.amount for value in values), 1])
    bars = [
        {
            "x": i * 10,
            "height": max(value.amount, 0) / top * 100,
            "label": f"{day.isoformat()} {value}",
        }
        for i, (day, value) in enumerate(zip(days, values, strict=True))
    ]
    by_tier = db.session.execute(
        sa.select(Tier.name, Membership.status, sa.func.count())
        .join(Membership, Membership.tier_id == Tier.id)
        .where(Tier.community_id == community.id)
        .group_by(Tier.name, Membership.status)
        .order_by(Tier.name, Membership.status)
    ).all()
    since = day_start(community, first)
    applied = sa.select(sa.func.count(Application.id)).where(
        Application.community_id == community.id, Application.created_at >= since
    )
    ordered = applied.where(Application.order_id.is_not(None))
    paid = ordered.join(Order, Order.id == Application.order_id).where(
        Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED])
    )
    visits = db.session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(PageVisits.visits), 0)).where(
            PageVisits.community_id == community.id, PageVisits.day >= first
        )
    )
    return {
        "bars": bars,
        "total": Money(sum(by_day.values()), community.currency),
        "by_tier": by_tier,
        "funnel": [visits, *(db.session.scalar(q) for q in (applied, ordered, paid))],
    }
