"""The one clock. Services take ``now=`` and fall back to this, so tests control time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
