"""Join-page visits, counted without a database write per visit.

Each process adds visits up in memory and adds them to ``page_visits`` (one upsert per
community and day) on the first visit after ``VISIT_FLUSH_SECONDS``, or, when no visit
comes, from a timer that many seconds after the first count held: so N workers on M
machines each add their own counts, a visit costs no write, and a page seen a few times
and then not at all is counted within those seconds all the same. A process that stops
loses at most that many seconds of counts: fine for a funnel, and nothing else reads
them. A failed write never fails the page: the counts wait for the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import date
from zoneinfo import ZoneInfo

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from core.clock import utcnow
from core.db import db, insert_for, take_write_lock
from membership.models import Community, PageVisits

log = logging.getLogger(__name__)


class VisitCounter:
    def __init__(self, app: Flask) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._pending: Counter[tuple[int, date]] = Counter()
        self._flushed_at = time.monotonic()
        self._timer: threading.Timer | None = None

    def count(self, community: Community) -> None:
        """One visit to ``community``'s join page, on its calendar's today. May commit."""
        today = utcnow().astimezone(ZoneInfo(community.time_zone)).date()
        with self._lock:
            self._pending[(community.id, today)] += 1
            if time.monotonic() - self._flushed_at < self._seconds():
                self._write_later()
                return
        self._write()

    def _seconds(self) -> float:
        return self._app.config["VISIT_FLUSH_SECONDS"]

    def _write_later(self) -> None:
        """Start the timer that writes the counts held if no visit does first (called
        holding the lock)."""
        if self._timer is None:
            self._timer = threading.Timer(self._seconds(), self._on_time)
            self._timer.daemon = True
            self._timer.start()

    def _on_time(self) -> None:
        with self._lock:
            self._timer = None
        with self._app.app_context():
            self._write()

    def _write(self) -> None:
        """Write the counts held, in the current app context (a page's, or the timer's);
        when the write fails they are held again and the timer started."""
        with self._lock:
            batch, self._pending = self._pending, Counter()
            self._flushed_at = time.monotonic()
        if not batch:
            return
        try:
            _add(batch)
        except SQLAlchemyError as error:
            db.session.rollback()
            log.warning("join-page visits not written yet: %s", error)
            with self._lock:
                self._pending.update(batch)
                self._write_later()


def _add(batch: Counter[tuple[int, date]]) -> None:
    """Add the counts to the database and commit (called from a page that changed nothing
    else, and had only read: it takes the write lock first, see
    :func:`core.db.take_write_lock`)."""
    take_write_lock()
    insert = insert_for(db.engine.dialect.name)
    for (community_id, day), visits in sorted(batch.items()):
        statement = insert(PageVisits).values(community_id=community_id, day=day, visits=visits)
        db.session.execute(
            statement.on_conflict_do_update(
                index_elements=["community_id", "day"],
                set_={"visits": PageVisits.visits + statement.excluded.visits},
            )
        )
    db.session.commit()


def init_visits(app: Flask) -> None:
    app.extensions["qunmen.visits"] = VisitCounter(app)


def count_visit(community: Community) -> None:
    current_app.extensions["qunmen.visits"].count(community)
