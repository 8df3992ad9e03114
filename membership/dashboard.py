"""The figures of a community's dashboard: KPI cards with their change against the
previous period, and the series its charts draw (revenue by day, week or month per
currency; members joined and ended; renewals due; seats per group; the join funnel).

Every figure comes from an aggregate query (GROUP BY), bucketed by the community's
calendar days in SQL: a fixed number of statements, whatever the number of members.
Periods are whole days of the community's calendar ending today; the previous period is
the same number of days just before.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import gettext as _

from core.charts import bar_chart
from core.clock import local_timestamp_sql
from core.db import db
from core.events import Event
from core.money import Money
from membership.exports import day_start
from membership.models import (
    CURRENT_MEMBERSHIP_STATUSES,
    Application,
    Community,
    Group,
    Membership,
    MembershipStatus,
    PageVisits,
    Tier,
)
from payments.exports import LedgerQuery
from payments.models import LedgerEntry, Order, OrderStatus

#: The periods the dashboard offers, in days.
PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30
#: How revenue may be bucketed.
BUCKETS = ("day", "week", "month")
#: Days ahead the renewals chart looks.
RENEWAL_DAYS = 30


@dataclass(frozen=True)
class Change:
    """A KPI now and over the previous period."""

    current: int
    previous: int

    @property
    def delta(self) -> int:
        return self.current - self.previous

    @property
    def percent(self) -> int | None:
        """The change in whole percent, or None when there was nothing before."""
        if not self.previous:
            return None
        return round(self.delta * 100 / abs(self.previous))


@dataclass(frozen=True)
class Period:
    """``days`` calendar days of the community ending ``today``, and the ones before."""

    community: Community
    days: int
    today: date

    @property
    def first(self) -> date:
        return self.today - timedelta(days=self.days - 1)

    @property
    def previous_first(self) -> date:
        return self.first - timedelta(days=self.days)

    @property
    def start(self) -> datetime:
        return day_start(self.community, self.first)

    @property
    def previous_start(self) -> datetime:
        return day_start(self.community, self.previous_first)

    @property
    def end(self) -> datetime:
        return day_start(self.community, self.today + timedelta(days=1))

    def days_list(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.days)]


@dataclass(frozen=True)
class Figures:
    period: Period
    #: Members with a current paid membership: now, and at the start of the period.
    paying: Change
    new: Change
    ended: Change
    #: Net revenue (minor units) by currency, this period and the previous one.
    revenue: dict[str, Change]
    #: Net revenue (minor units) by currency and local day (ISO text), this period.
    revenue_by_day: dict[str, dict[str, int]]
    joined_by_day: dict[str, int]
    ended_by_day: dict[str, int]
    #: Memberships whose term ends on each of the next :data:`RENEWAL_DAYS` days.
    renewals_by_day: dict[str, int]
    #: (group name, seats taken, capacity), in the groups' order.
    seats: list[tuple[str, int, int]]
    #: Join-page visits, applications, orders, paid orders over the period.
    funnel: tuple[int, int, int, int]


def _local_day(column, community: Community, start: datetime, end: datetime):
    """SQL for ``column``'s day on the community's calendar, ``YYYY-MM-DD``."""
    return sa.func.substr(local_timestamp_sql(column, community.time_zone, start, end), 1, 10)


def _halves(by_day: dict[str, int], period: Period) -> Change:
    """The counts of ``by_day`` (over both periods) summed for each period."""
    first = period.first.isoformat()
    return Change(
        current=sum(n for day, n in by_day.items() if day >= first),
        previous=sum(n for day, n in by_day.items() if day < first),
    )


def _revenue(period: Period) -> dict[tuple[str, str], int]:
    """Net ledger minor units by (local day, currency) over both periods."""
    query = LedgerQuery(
        community_id=period.community.id,
        start=period.previous_start,
        end=period.end,
        time_zone=period.community.time_zone,
    )
    day = sa.func.substr(query.local_time(), 1, 10).label("day")
    rows = db.session.execute(
        query.select(day, LedgerEntry.currency, sa.func.sum(LedgerEntry.amount)).group_by(
            "day", LedgerEntry.currency
        )
    )
    return {(day, currency): amount for day, currency, amount in rows}


def _joined(period: Period) -> dict[str, int]:
    """Members whose first paid membership of the community started, by local day."""
    community = period.community
    day = _local_day(Membership.starts_at, community, period.previous_start, period.end)
    rows = db.session.execute(
        sa.select(day.label("day"), sa.func.count(sa.distinct(Membership.member_id)))
        .join(Tier, Tier.id == Membership.tier_id)
        .where(
            Tier.community_id == community.id,
            Tier.price > 0,
            Membership.starts_at >= period.previous_start,
            Membership.starts_at < period.end,
        )
        .group_by("day")
    )
    return dict(rows.all())


def _ended(period: Period) -> dict[str, int]:
    """Memberships that ended (refunded, expired, purged, lost a dispute), by local day:
    the ``membership.ended`` events, which say when, where the membership does not."""
    community = period.community
    day = _local_day(Event.created_at, community, period.previous_start, period.end)
    rows = db.session.execute(
        sa.select(day.label("day"), sa.func.count())
        .where(
            Event.community_id == community.id,
            Event.type == "membership.ended",
            Event.data["status"].as_string() != MembershipStatus.SUSPENDED.value,
            Event.created_at >= period.previous_start,
            Event.created_at < period.end,
        )
        .group_by("day")
    )
    return dict(rows.all())


def _paying_now(community: Community, now: datetime) -> int:
    """Members with a current membership of a paid tier."""
    return db.session.scalar(
        sa.select(sa.func.count(sa.distinct(Membership.member_id)))
        .join(Tier, Tier.id == Membership.tier_id)
        .where(
            Tier.community_id == community.id,
            Tier.price > 0,
            Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES),
            sa.or_(Membership.ends_at.is_(None), Membership.ends_at > now),
        )
    )


def _renewals(community: Community, now: datetime) -> dict[str, int]:
    """Current memberships whose term ends in the next :data:`RENEWAL_DAYS` days, by day."""
    until = now + timedelta(days=RENEWAL_DAYS)
    day = _local_day(Membership.ends_at, community, now, until)
    rows = db.session.execute(
        sa.select(day.label("day"), sa.func.count())
        .join(Tier, Tier.id == Membership.tier_id)
        .where(
            Tier.community_id == community.id,
            Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES),
            Membership.ends_at >= now,
            Membership.ends_at < until,
        )
        .group_by("day")
    )
    return dict(rows.all())


def _funnel(period: Period) -> tuple[int, int, int, int]:
    """Join-page visits, applications, those that made an order, those paid (refunded
    later still counts: they paid), over the period, in one statement."""
    community = period.community
    visits = (
        sa.select(sa.func.coalesce(sa.func.sum(PageVisits.visits), 0))
        .where(PageVisits.community_id == community.id, PageVisits.day >= period.first)
        .scalar_subquery()
    )
    paid = sa.case((Order.status.in_([OrderStatus.PAID, OrderStatus.REFUNDED]), 1), else_=0)
    row = db.session.execute(
        sa.select(
            visits,
            sa.func.count(Application.id),
            sa.func.count(Application.order_id),
            sa.func.coalesce(sa.func.sum(paid), 0),
        )
        .select_from(Application)
        .outerjoin(Order, Order.id == Application.order_id)
        .where(Application.community_id == community.id, Application.created_at >= period.start)
    ).one()
    return tuple(int(n) for n in row)


def dashboard_figures(community: Community, days: int, *, now: datetime) -> Figures:
    """Everything the dashboard shows of ``community`` over the last ``days`` days up to
    ``now``: eight statements, reading only. The paying members at the start of the
    period are the ones now, less those who joined since, plus those who left since."""
    today = now.astimezone(ZoneInfo(community.time_zone)).date()
    period = Period(community, days, today)
    revenue_days = _revenue(period)
    revenue: dict[str, Change] = {}
    by_currency: dict[str, dict[str, int]] = defaultdict(dict)
    for currency in sorted({key[1] for key in revenue_days}):
        days_of = {day: n for (day, c), n in revenue_days.items() if c == currency}
        revenue[currency] = _halves(days_of, period)
        first = period.first.isoformat()
        by_currency[currency] = {day: n for day, n in days_of.items() if day >= first}
    joined, ended = _joined(period), _ended(period)
    new, gone = _halves(joined, period), _halves(ended, period)
    paying = _paying_now(community, now)
    seats = db.session.execute(
        sa.select(Group.name, Group.seats_taken, Group.capacity)
        .where(Group.community_id == community.id)
        .order_by(Group.id)
    ).all()
    first = period.first.isoformat()
    return Figures(
        period=period,
        paying=Change(paying, paying - new.current + gone.current),
        new=new,
        ended=gone,
        revenue=revenue,
        revenue_by_day=dict(by_currency),
        joined_by_day={day: n for day, n in joined.items() if day >= first},
        ended_by_day={day: n for day, n in ended.items() if day >= first},
        renewals_by_day=_renewals(community, now),
        seats=[tuple(row) for row in seats],
        funnel=_funnel(period),
    )


def buckets(period: Period, by: str) -> list[tuple[str, list[str]]]:
    """The period's days grouped for a chart: each bucket's first day (ISO text, its
    label) and its days. Weeks start on Monday; the first and last may be partial."""
    groups: dict[str, list[str]] = {}
    for day in period.days_list():
        if by == "week":
            key = day - timedelta(days=day.weekday())
        elif by == "month":
            key = day.replace(day=1)
        else:
            key = day
        label = key.isoformat()[:7] if by == "month" else key.isoformat()[5:]
        groups.setdefault(label, []).append(day.isoformat())
    return list(groups.items())


def bucketed(by_day: dict[str, int], groups: list[tuple[str, list[str]]]) -> list[int]:
    """``by_day`` summed over each bucket of :func:`buckets`."""
    return [sum(by_day.get(day, 0) for day in days) for _, days in groups]


@dataclass(frozen=True)
class Card:
    """A KPI card: what it counts, its value and change as people read them, and whether
    the change is good news (more members, fewer ended)."""

    key: str
    label: str
    value: str
    change: Change
    delta: str
    good: bool | None


def _card(key: str, label: str, change: Change, text=str, *, more_is_good: bool = True) -> Card:
    sign = "+" if change.delta > 0 else ""
    delta = f"{sign}{text(change.delta)}"
    if change.percent is not None:
        delta += f" ({sign}{change.percent}%)"
    good = None if change.delta == 0 else (change.delta > 0) == more_is_good
    return Card(key, label, text(change.current), change, delta, good)


def dashboard_charts(
    community: Community, days: int, by: str, *, now: datetime, money: bool = True
) -> dict:
    """The dashboard's cards and charts for the template, in the request's language;
    revenue only when ``money`` (the reader may see it)."""
    figures = dashboard_figures(community, days, now=now)
    period = figures.period
    cards = [
        _card("paying", _("Paying members"), figures.paying),
        _card("new", _("New members"), figures.new),
        _card("ended", _("Ended"), figures.ended, more_is_good=False),
    ]
    groups = buckets(period, by)
    labels = [label for label, _days in groups]
    revenue = []
    if money:
        for currency, change in figures.revenue.items():

            def text(amount, currency=currency):
                return str(Money(int(amount), currency))

            cards.append(
                _card(
                    f"revenue-{currency}",
                    _("Revenue (%(currency)s)", currency=currency),
                    change,
                    text,
                )
            )
            values = bucketed(figures.revenue_by_day[currency], groups)
            revenue.append(
                {
                    "currency": currency,
                    "total": text(change.current),
                    "chart": bar_chart(labels, [values], text=text, titles=(_("Revenue"),)),
                    "rows": list(zip(labels, map(text, values), strict=True)),
                }
            )
    joined = bucketed(figures.joined_by_day, groups)
    ended = bucketed(figures.ended_by_day, groups)
    flow = {
        "chart": bar_chart(labels, [joined, ended], titles=(_("Joined"), _("Ended"))),
        "rows": list(zip(labels, joined, ended, strict=True)),
    }
    today = period.today
    soon = [(today + timedelta(days=i)).isoformat() for i in range(RENEWAL_DAYS)]
    due = [figures.renewals_by_day.get(day, 0) for day in soon]
    renewals = {
        "total": sum(due),
        "chart": bar_chart([day[5:] for day in soon], [due], titles=(_("Renewals due"),)),
        "rows": [(day[5:], n) for day, n in zip(soon, due, strict=True) if n],
    }
    return {
        "cards": cards,
        "revenue": revenue,
        "flow": flow,
        "renewals": renewals,
        "seats": figures.seats,
        "funnel": figures.funnel,
        "first": period.first,
        "today": period.today,
    }
