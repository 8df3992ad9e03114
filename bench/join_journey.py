"""The flash join's journey step by step, in process: CPU milliseconds, SQL statements and
Python calls per request of each step, the server's side of what ``bench/flash_join.py``
does over HTTP (open the join form, send it, open the code page, send the code, open the
fake cashier, pay, open the status page).

    .venv/bin/python bench/join_journey.py                    # SQLite, 1,000 members
    bin/with-postgres .venv/bin/python bench/join_journey.py --database postgres
    .venv/bin/python bench/join_journey.py --profile "POST code"   # cProfile of one step

Each prospect has an address and an e-mail of their own and pays with ``fake``, as in the
flash join; the code is read from the outbox, as a phone would show it. The first prospects
warm the caches and are not counted. Calls are counted by cProfile, on each step apart,
only with ``--calls`` (it slows every step down).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.flash_join import CODE, HIDDEN, LATEST_CODE, join_form, path_of, prospect_email  # noqa: E402
from bench.scale import Statements  # noqa: E402
from bench.seed import seed_members, settle  # noqa: E402
from bench.webhook_ingest import SETTINGS, database  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db  # noqa: E402
from membership.cli import seed_demo_community  # noqa: E402
from membership.models import Tier  # noqa: E402

STEPS = ("GET join", "POST join", "GET code", "POST code", "GET cashier", "POST pay", "GET status")
WARM = 10


def prepare(url: str, members: int):
    """The demo community with ``members`` paid members, paid for with ``fake``."""
    os.environ.update(SETTINGS)
    os.environ.update({"DATABASE_URL": url, "PAYMENT_PROVIDERS": "fake"})
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "QUEUE_IN_PROCESS": False})
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        community = seed_demo_community()
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        seed_members(community, tier, members, now=utcnow(), paid=True)
        db.session.commit()
        settle(db.engine)
    return app


class Journeys:
    """Prospects walking the journey; what each step cost, per step."""

    def __init__(self, app, *, profile: str | None, calls: bool) -> None:
        self.app = app
        with app.app_context():
            self.statements = Statements(db.engine)
        self.costs: dict[str, list[tuple[float, int]]] = {step: [] for step in STEPS}
        self.profile_step = profile
        self.profile = cProfile.Profile()
        self.calls = {step: cProfile.Profile() for step in STEPS} if calls else None

    def code_sent_to(self, email: str) -> str:
        with self.app.app_context():
            body = db.session.scalar(LATEST_CODE, {"to": f"%{email}%"})
            db.session.remove()
        return CODE.search(body).group(1)

    def walk(self, person: int, *, counted: bool) -> None:
        client = self.app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.9.{person // 250}.{person % 250 + 1}"
        email = prospect_email(person)

        def tap(step: str, path: str, data: dict | None = None):
            profiles = [self.profile] if counted and step == self.profile_step else []
            if counted and self.calls is not None:
                profiles.append(self.calls[step])
            before, started = self.statements.count, time.process_time()
            for profile in profiles:
                profile.enable()
            response = client.open(path, method="POST" if data else "GET", data=data)
            for profile in profiles:
                profile.disable()
            if counted:
                cpu = (time.process_time() - started) * 1000
                self.costs[step].append((cpu, self.statements.count - before))
            return response

        form = join_form(tap("GET join", "/join/demo/main").text, person)
        verify = _path_of(tap("POST join", "/join/demo/main", form))
        token = dict(HIDDEN.findall(tap("GET code", verify).text))["csrf_token"]
        code = self.code_sent_to(email)
        cashier = _path_of(tap("POST code", verify, {"csrf_token": token, "code": code}))
        token = dict(HIDDEN.findall(tap("GET cashier", cashier).text))["csrf_token"]
        status = _path_of(tap("POST pay", cashier, {"csrf_token": token, "pay": "y"}))
        assert 'id="member-number"' in tap("GET status", status).text, person

    def report(self, people: int) -> None:
        print(f"{'step':12} {'CPU ms':>7} {'stmts':>6} {'calls':>7}")
        total = 0.0
        for step in STEPS:
            cpu = statistics.median(c for c, _ in self.costs[step])
            statements = statistics.median(s for _, s in self.costs[step])
            calls = pstats.Stats(self.calls[step]).total_calls / people if self.calls else 0
            total += cpu
            print(f"{step:12} {cpu:7.2f} {statements:6.0f} {calls:7.0f}")
        print(f"{'journey':12} {total:7.2f}")
        if self.profile_step:
            stats = pstats.Stats(self.profile).sort_stats("cumulative")
            stats.print_stats(r"(membership|payments|core|perks|flask_wtf|wtforms)", 40)


def _path_of(response) -> str:
    assert response.status_code == 302, response.status_code
    return path_of(response.headers["Location"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--people", type=int, default=60, help="Prospects measured.")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--profile", choices=STEPS, help="cProfile this step.")
    parser.add_argument("--calls", action="store_true", help="Count Python calls per step.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, database(args.database, Path(scratch)) as url:
        app = prepare(url, args.members)
        journeys = Journeys(app, profile=args.profile, calls=args.calls)
        for person in range(WARM):
            journeys.walk(person, counted=False)
        for person in range(WARM, WARM + args.people):
            journeys.walk(person, counted=True)
        print(f"{args.database}, {args.members} members, {args.people} prospects, in process")
        journeys.report(args.people)
        with app.app_context():
            db.engine.dispose()


if __name__ == "__main__":
    main()
