"""The one clock. Services take ``now=`` and fall back to this, so tests control time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


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
