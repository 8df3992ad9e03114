"""Limits on tries (``core.limits``): the tries a request makes are claimed together, in
one statement per window, and a refusal names every limit it reached."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.clock import utcnow
from core.db import db
from core.limits import AttemptCounter, Limit, TooManyTries, claim
from tests.helpers import statements

PER_CLIENT = Limit("test-limits:client", 2, timedelta(minutes=15))
OVERALL = Limit("test-limits:all", 3, timedelta(minutes=15))
HOURLY = Limit("test-limits:hourly", 5, timedelta(hours=1))


def _claims_counted(app, checks, now) -> tuple[int, TooManyTries | None]:
    """Claim ``checks``; the statements that wrote the counters, and the refusal if any."""
    with statements(app) as seen:
        try:
            claim(checks, now=now)
            refusal = None
        except TooManyTries as refused:
            refusal = refused
    db.session.commit()
    return len([s for s in seen if "attempt_counters" in s]), refusal


def _count(key: str) -> int | None:
    counter = db.session.get(AttemptCounter, key)
    return None if counter is None else counter.count


def test_the_tries_of_a_request_are_claimed_in_one_statement(app):
    with app.app_context():
        now = utcnow()
        checks = [(PER_CLIENT, "198.51.100.7"), (OVERALL, ""), (HOURLY, "x")]
        written, refusal = _claims_counted(app, checks, now)
        # Two windows (15 minutes and an hour): one statement each, not one per limit.
        assert (written, refusal) == (2, None)
        written, refusal = _claims_counted(app, checks[:2], now)
        assert (written, refusal) == (1, None)
        assert _count("test-limits:client:198.51.100.7") == 2
        assert _count("test-limits:all:") == 2
        assert _count("test-limits:hourly:x") == 1


def test_a_refusal_names_every_limit_reached_and_every_try_counts(app):
    with app.app_context():
        now = utcnow()
        checks = [(OVERALL, ""), (PER_CLIENT, "c"), (HOURLY, "h")]
        for _ in range(2):
            assert _claims_counted(app, checks, now)[1] is None
        _written, refusal = _claims_counted(app, checks, now)
        assert refusal.limit == PER_CLIENT
        assert refusal.reached == (PER_CLIENT,)
        _written, refusal = _claims_counted(app, checks, now)
        # The first reached in the order given, and all of them.
        assert refusal.limit == OVERALL
        assert set(refusal.reached) == {OVERALL, PER_CLIENT}
        assert (_count("test-limits:all:"), _count("test-limits:client:c")) == (4, 4)
        assert _count("test-limits:hourly:h") == 4


def test_a_window_that_ended_starts_over_and_a_pair_given_twice_counts_once(app):
    with app.app_context():
        now = utcnow()
        for _ in range(3):
            _claims_counted(app, [(PER_CLIENT, "w")], now)
        later = now + PER_CLIENT.window
        assert _claims_counted(app, [(PER_CLIENT, "w"), (PER_CLIENT, "w")], later)[1] is None
        counter = db.session.get(AttemptCounter, "test-limits:client:w")
        db.session.refresh(counter)
        assert (counter.count, counter.window_start) == (1, later)


@pytest.mark.parametrize("size", [1, 4, 7])
def test_any_number_of_tries_is_claimed_together(app, size):
    with app.app_context():
        now = utcnow()
        checks = [(OVERALL, f"s{i}") for i in range(size)]
        assert _claims_counted(app, checks, now) == (1, None)
        assert [_count(f"test-limits:all:s{i}") for i in range(size)] == [1] * size
