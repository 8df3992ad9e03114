"""The one clock. Services take ``now=`` and fall back to this, so tests control time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


def local_time(moment: datetime, zone: str) -> str:
    """``moment`` as people in ``zone`` (an IANA name) read it: ``2026-11-25 09:30``."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")
