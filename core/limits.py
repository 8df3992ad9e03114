"""Limits on tries: how many code requests, code checks, sign-ups, staff logins and coupon
tries a client, an account or the whole install may make in a window.

Each limit is a named counter in one table. A try is *claimed* before it is checked: one
``INSERT … ON CONFLICT DO UPDATE … RETURNING`` adds it and returns the count, so parallel
requests on PostgreSQL queue on the counter's row and each sees the ones before it — no
more tries are checked than the limit, however many arrive at once. The caller commits the
claim before doing the check (a refused try must still count), which also releases the row.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from flask import request
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime, db, insert_for, session_dialect


class AttemptCounter(db.Model):
    """Tries counted under one key in a fixed window."""

    __tablename__ = "attempt_counters"

    #: What is counted, e.g. ``code-check:ip:203.0.113.0`` or ``staff-login:global``.
    key: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    #: When the current window began; a try after it ends starts a new one.
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    count: Mapped[int]


@dataclass(frozen=True)
class Limit:
    """At most ``tries`` in ``window`` for each key it is applied to."""

    name: str
    tries: int
    window: timedelta


class TooManyTries(Exception):
    """A limit was reached; ``limit`` says which. Nothing was checked."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(limit.name)
        self.limit = limit


def client_network(address: str | None = None) -> str:
    """The client a per-client limit counts: its IPv4 address, or its IPv6 /64 (one
    subscriber usually holds a whole /64). ``address`` defaults to this request's."""
    address = request.remote_addr if address is None else address
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@cache
def _upsert(dialect: str) -> sa.Insert:
    """The statement that claims a try under ``:key`` at ``:now`` and returns the count,
    a window that began at or before ``:cutoff`` starting over. Built once per dialect:
    it runs on most public requests, and building the construct cost more than running
    it."""
    table = AttemptCounter.__table__
    now = sa.bindparam("now", type_=UTCDateTime())
    expired = table.c.window_start <= sa.bindparam("cutoff", type_=UTCDateTime())
    return (
        insert_for(dialect)(table)
        .values(key=sa.bindparam("key", type_=sa.String()), window_start=now, count=1)
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": sa.case((expired, 1), else_=table.c.count + 1),
                "window_start": sa.case((expired, now), else_=table.c.window_start),
            },
        )
        .returning(table.c.count)
    )


def _claim_one(key: str, window: timedelta, now: datetime) -> int:
    """Add one try under ``key`` and return the tries in its current window, this one
    included."""
    statement = _upsert(session_dialect())
    return db.session.execute(
        statement, {"key": key, "now": now, "cutoff": now - window}
    ).scalar_one()


def claim(checks: list[tuple[Limit, str]], *, now: datetime) -> None:
    """Claim one try under each ``(limit, subject)`` pair, or raise :class:`TooManyTries`
    naming the first limit reached. Every pair is claimed either way, so a client over one
    limit keeps using up the others. Flushed; the caller commits before the check."""
    refused = None
    for limit, subject in checks:
        if _claim_one(f"{limit.name}:{subject}", limit.window, now) > limit.tries:
            refused = refused or limit
    if refused is not None:
        raise TooManyTries(refused)


def prune(*, now: datetime, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete counters whose window ended long ago. Returns how many went."""
    result = db.session.execute(
        sa.delete(AttemptCounter).where(AttemptCounter.window_start < now - older_than)
    )
    return result.rowcount
