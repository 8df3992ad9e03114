"""The figures of a community's dashboard: KPI cards with their change against the
previous period, and the series its charts draw (revenue by day, week or month per
currency; members joined and ended; renewals due; seats per group; the join funnel).

Revenue, members joined and ended and the funnel come from the community's daily figures
(:mod:`membership.figures`, kept as payments and memberships are written): a few hundred
rows a page, whatever the number of members; paying members from their running count
there, renewals due from an indexed range of memberships, seats from the groups' counters.
Periods are whole days of the community's calendar ending today; the previous period is
the same number of days just before.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import get_locale
from flask_babel import gettext as _

from core.charts import bar_chart
from core.clock import local_timestamp_sql
from core.db import db
from core.money import DEFAULT_LOCALE, Money
from membership.exports import day_start
from membership.figures import COUNTS, FIELDS, DailyFigures, paying_members
from membership.models import (
    CURRENT_MEMBERSHIP_STATUSES,
    Community,
    Membership,
    PageVisits,
    Tier,
)

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


#: The community's daily figures between two days, summed over their slots (built once).
_DAILY = (
    sa.select(
        DailyFigures.day,
        DailyFigures.currency,
        *[sa.func.sum(getattr(DailyFigures, name)) for name in FIELDS],
    )
    .where(
        DailyFigures.community_id == sa.bindparam("community_id"),
        DailyFigures.day >= sa.bindparam("first", type_=sa.Date),
        DailyFigures.day <= sa.bindparam("last", type_=sa.Date),
    )
    .group_by(DailyFigures.day, DailyFigures.currency)
)
#: Join-page visits from a day on (built once).
_VISITS = sa.select(sa.func.coalesce(sa.func.sum(PageVisits.visits), 0)).where(
    PageVisits.community_id == sa.bindparam("community_id"),
    PageVisits.day >= sa.bindparam("first", type_=sa.Date),
)


def _daily(period: Period) -> list[tuple[str, str, list[int]]]:
    """The community's daily figures over both periods: (local day as ISO text, currency
    or "" for the counts, the figures of :data:`membership.figures.FIELDS`): a few hundred
    rows whatever the number of members."""
    rows = db.session.execute(
        _DAILY,
        {"community_id": period.community.id, "first": period.previous_first, "last": period.today},
    )
    return [
        (day.isoformat(), currency, [int(v) for v in values]) for day, currency, *values in rows
    ]


def _column(rows, field: str, currency: str = COUNTS) -> dict[str, int]:
    """One figure of the daily rows of ``currency``, by day (days with none left out)."""
    index = FIELDS.index(field)
    return {day: values[index] for day, cur, values in rows if cur == currency and values[index]}


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


def _funnel(period: Period, rows) -> tuple[int, int, int, int]:
    """Join-page visits, applications, those that made an order, those paid (refunded
    later still counts: they paid), of the period's applicants."""
    community = period.community
    visits = db.session.scalar(_VISITS, {"community_id": community.id, "first": period.first})
    first = period.first.isoformat()
    steps = [
        sum(_column([r for r in rows if r[0] >= first], field).values())
        for field in ("applications", "orders", "paid")
    ]
    return (int(visits), *steps)


def dashboard_figures(community: Community, days: int, *, now: datetime) -> Figures:
    """Everything the dashboard shows of ``community`` over the last ``days`` days up to
    ``now``: four statements (and the community's groups, unless loaded), reading only,
    none of them over every member or payment.
    The paying members at the start of the period are the ones now, less those who joined
    since, plus those who left since."""
    today = now.astimezone(ZoneInfo(community.time_zone)).date()
    period = Period(community, days, today)
    rows = _daily(period)
    revenue: dict[str, Change] = {}
    by_currency: dict[str, dict[str, int]] = defaultdict(dict)
    first = period.first.isoformat()
    for currency in sorted({cur for _day, cur, _values in rows if cur != COUNTS}):
        days_of = _column(rows, "revenue", currency)
        revenue[currency] = _halves(days_of, period)
        by_currency[currency] = {day: n for day, n in days_of.items() if day >= first}
    joined, ended = _column(rows, "joined"), _column(rows, "ended")
    new, gone = _halves(joined, period), _halves(ended, period)
    paying = paying_members(db.session, community.id, now=now)
    seats = [(group.name, group.seats_taken, group.capacity) for group in community.groups]
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
        seats=seats,
        funnel=_funnel(period, rows),
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
    # The reader's locale named once, not looked up for each of the hundred amounts.
    reader = str(get_locale() or DEFAULT_LOCALE)
    if money:
        for currency, change in figures.revenue.items():

            def text(amount, currency=currency):
                return Money(int(amount), currency).format(reader)

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
