"""The one clock. Services take ``now=`` and fall back to this, so tests control time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from core.db import is_postgresql


def utcnow() -> datetime:
    return datetime.now(UTC)


def local_time(moment: datetime, zone: str) -> str:
    """``moment`` as people in ``zone`` (an IANA name) read it: ``2026-11-25 09:30``."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def from_local(moment: datetime, zone: str) -> datetime:
    """A wall-clock time typed in ``zone`` (naive, as forms give it) as aware UTC."""
    return moment.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def to_local(moment: datetime, zone: str) -> datetime:
    """An aware time as the naive wall-clock time forms show in ``zone``."""
    return moment.astimezone(ZoneInfo(zone)).replace(tzinfo=None)


def utc_offsets(zone: str, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The UTC offsets, in seconds, that ``zone`` keeps from ``start`` to ``end``: each
    with the moment it stops applying (``end`` for the last). Daylight saving changes are
    months apart, so looking day by day finds each (an hour by hour look cost the
    dashboard 12 ms a range); the second it happens is then found by halving (zones
    change on whole seconds)."""
    tz = ZoneInfo(zone)

    def offset(second: int) -> int:
        return int(datetime.fromtimestamp(second, tz).utcoffset().total_seconds())

    first, last = int(start.timestamp()), int(end.timestamp())
    spans, current, second = [], offset(first), first
    while second < last:
        step = min(second + 86400, last)
        if offset(step) != current:
            low, high = second, step  # offset(low) is current, offset(high) is not
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            spans.append((datetime.fromtimestamp(high, UTC), current))
            current, step = offset(high), high
        second = step
    spans.append((end, current))
    return spans


def local_timestamp_sql(
    column: sa.ColumnElement[datetime], zone: str, start: datetime, end: datetime
) -> sa.ColumnElement[str]:
    """SQL for ``column`` (an aware UTC time between ``start`` and ``end``) as wall-clock
    text in ``zone``, ``YYYY-MM-DD HH:MM:SS``: the database formats a million times in the
    time Python takes for a few. PostgreSQL knows the zone; SQLite is given its offsets."""
    if is_postgresql():
        return sa.func.to_char(sa.func.timezone(zone, column), "YYYY-MM-DD HH24:MI:SS")
    spans = utc_offsets(zone, start, end)
    shift = (
        sa.case(
            *[(column < until, f"{offset:+d} seconds") for until, offset in spans[:-1]],
            else_=f"{spans[-1][1]:+d} seconds",
        )
        if len(spans) > 1
        else sa.literal(f"{spans[0][1]:+d} seconds")
    )
    # SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff`` and would round the fraction; cut it.
    seconds = sa.func.substr(column, 1, 19)
    return sa.func.datetime(seconds, shift, type_=sa.String)
