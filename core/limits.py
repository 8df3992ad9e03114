"""Limits on tries: how many code requests, code checks, sign-ups, staff logins and coupon
tries a client, an account or the whole install may make in a window.

Each limit is a named counter in one table. A try is *claimed* before it is checked: one
``INSERT … ON CONFLICT DO UPDATE … RETURNING`` adds it to every counter the request
claims and returns their counts, so parallel requests on PostgreSQL queue on the counters'
rows and each sees the ones before it — no more tries are checked than the limit, however
many arrive at once. The caller commits the
claim before doing the check (a refused try must still count), which also releases the row.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

import sqlalchemy as sa
from flask import request
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
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
    """A limit was reached; ``limit`` says which (the first of those claimed together),
    ``reached`` all that were. Nothing was checked."""

    def __init__(self, limit: Limit, reached: tuple[Limit, ...] = ()) -> None:
        super().__init__(limit.name)
        self.limit = limit
        self.reached = reached or (limit,)


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
def _upsert(dialect: str, keys: int) -> sa.TextClause:
    """The statement that claims a try under each of ``keys`` keys (``:key0``, ``:key1``
    …) at ``:now`` and returns each key with its count, a window that began at or before
    ``:cutoff`` starting over: one statement for all the limits a request claims. Built
    and compiled once per dialect and number of keys (SQLAlchemy compiles a many-row
    INSERT again on every run, and it runs on most public requests)."""
    table = AttemptCounter.__table__
    now = sa.bindparam("now", type_=UTCDateTime())
    cutoff = sa.bindparam("cutoff", type_=UTCDateTime())
    expired = table.c.window_start <= cutoff
    names = [sa.bindparam(f"key{i}", type_=sa.String()) for i in range(keys)]
    one = sa.literal_column("1", sa.Integer)  # not a parameter: the text binds none
    construct = (
        insert_for(dialect)(table)
        .values([{"key": name, "window_start": now, "count": one} for name in names])
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": sa.case((expired, one), else_=table.c.count + one),
                "window_start": sa.case((expired, now), else_=table.c.window_start),
            },
        )
        .returning(table.c.key, table.c.count)
    )
    # Compiled by the dialect's base, with named parameters the text can bind (psycopg's
    # would add casts, ``:now::TIMESTAMP``, that a text does not read as parameters).
    named = (PGDialect if dialect == "postgresql" else SQLiteDialect)(paramstyle="named")
    return (
        sa.text(str(construct.compile(dialect=named)))
        .bindparams(now, cutoff, *names)
        .columns(table.c.key, table.c.count)
    )


def _claim_keys(keys: list[str], window: timedelta, now: datetime) -> dict[str, int]:
    """Add one try under each of ``keys`` (distinct, counted in windows of ``window``) and
    return the tries in each key's current window, this one included. The keys go in
    sorted: parallel claims lock the rows they share in the same order, never in a
    deadlock."""
    keys = sorted(keys)
    statement = _upsert(session_dialect(), len(keys))
    params = {f"key{i}": key for i, key in enumerate(keys)}
    return dict(db.session.execute(statement, {**params, "now": now, "cutoff": now - window}).all())


def claim(checks: list[tuple[Limit, str]], *, now: datetime) -> None:
    """Claim one try under each ``(limit, subject)`` pair (one statement for the pairs
    whose limits share a window: usually all), or raise :class:`TooManyTries` naming the
    first limit reached and all of them. Every pair is claimed either way, so a client
    over one limit keeps using up the others; a pair given twice counts once. Flushed; the
    caller commits before the check (a refused try must still count)."""
    keyed = {f"{limit.name}:{subject}": limit for limit, subject in checks}
    counts: dict[str, int] = {}
    for window in dict.fromkeys(limit.window for limit in keyed.values()):
        keys = [key for key, limit in keyed.items() if limit.window == window]
        counts.update(_claim_keys(keys, window, now))
    reached = tuple(
        dict.fromkeys(limit for key, limit in keyed.items() if counts[key] > limit.tries)
    )
    if reached:
        raise TooManyTries(reached[0], reached)


def prune(*, now: datetime, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete counters whose window ended long ago. Returns how many went."""
    result = db.session.execute(
        sa.delete(AttemptCounter).where(AttemptCounter.window_start < now - older_than)
    )
    return result.rowcount
