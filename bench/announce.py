"""An announcement to 10,000 members, queued by one admin request, against a bare
executemany INSERT of the same 10,000 outbox rows (built beforehand) into a plain table
with the same columns and unique key, in the same run on the same database. Then the same
announcement sent again, which must queue nothing. Checks the outbox holds one message per
member.

    bench/run announce --members 10000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.seed import seed_members  # noqa: E402
from bench.webhook_ingest import SETTINGS, database  # noqa: E402
from core.auth import create_staff_user  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import UTCDateTime, db  # noqa: E402
from core.outbox import OutboxMessage  # noqa: E402
from membership.cli import seed_demo_community  # noqa: E402
from membership.models import Tier  # noqa: E402
from perks.models import Announcement  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "a long bench password"

#: Not in the app's metadata: the migrations never see it.
bare_metadata = sa.MetaData()
bare_outbox = sa.Table(
    "bench_bare_outbox",
    bare_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("recipient", sa.String(254), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("routes", sa.JSON),
    sa.Column("params", sa.JSON),
    sa.Column("member_id", sa.Integer),
    sa.Column("dedupe_key", sa.String(120), unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)


def prepare(url: str, members: int):
    """Migrate, seed the demo community with ``members`` current members (phones), an
    owner and an announcement to everyone. Returns the app and the announcement's id."""
    os.environ.update(SETTINGS)
    os.environ["DATABASE_URL"] = url
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "QUEUE_IN_PROCESS": False})
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        community = seed_demo_community()
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        now = utcnow()
        seed_members(community, main, members, now=now)
        create_staff_user(EMAIL, "bench", PASSWORD, actor="bench")
        announcement = Announcement(
            community=community,
            title="周末分享会",
            body="本周六晚八点，线上分享。" * 4,
            created_by="bench",
            created_at=now,
        )
        db.session.add(announcement)
        db.session.commit()
        bare_metadata.create_all(db.engine)
        return app, announcement.id


def logged_in_client(app):
    client = app.test_client()
    page = client.get("/admin/login").text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    client.post(
        "/admin/login",
        data={"csrf_token": token, "email": EMAIL, "password": PASSWORD, "code": ""},
    )
    return client, token


def bare_rows(members: int) -> list[dict]:
    now = utcnow()
    return [
        {
            "channel": "sms",
            "recipient": f"138{i:08d}",
            "subject": "群门示范社群：周末分享会",
            "body": "本周六晚八点，线上分享。" * 4
            + f"\n退订 · Unsubscribe: http://qunmen.test/unsubscribe/{'x' * 40}",
            "routes": [["sms", f"138{i:08d}"]],
            "params": {"title": "周末分享会", "unsubscribe": "http://qunmen.test/u/x"},
            "member_id": i,
            "dedupe_key": f"bare:1:member:{i}",
            "created_at": now,
        }
        for i in range(members)
    ]


def run(kind: str, members: int) -> tuple[float, float, float, int]:
    """Seconds for the bare insert, the first send and the second; messages queued."""
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        app, announcement_id = prepare(url, members)
        client, token = logged_in_client(app)
        rows = bare_rows(members)
        with app.app_context():
            started = time.perf_counter()
            with db.engine.begin() as connection:
                connection.execute(bare_outbox.insert(), rows)
            bare = time.perf_counter() - started
        sends = []
        for _ in range(2):
            started = time.perf_counter()
            response = client.post(
                f"/admin/announcements/{announcement_id}/send", data={"csrf_token": token}
            )
            sends.append(time.perf_counter() - started)
            assert response.status_code == 302, response.status_code
        with app.app_context():
            queued = db.session.scalar(
                sa.select(sa.func.count()).where(OutboxMessage.dedupe_key.like("announcement:%"))
            )
            assert queued == members, queued
            db.session.remove()
            db.engine.dispose()
        return bare, sends[0], sends[1], queued


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    if "postgres" in kinds and not os.environ.get("TEST_DATABASE_URL"):
        kinds.remove("postgres")
    print(f"announcement enqueue: {args.members} members, one request, {os.cpu_count()} CPUs")
    print(f"{'database':10} {'bare s':>7} {'send s':>7} {'ratio':>6} {'again s':>8} {'queued':>7}")
    for kind in kinds:
        bare, first, second, queued = run(kind, args.members)
        print(f"{kind:10} {bare:7.2f} {first:7.2f} {first / bare:6.2f} {second:8.2f} {queued:7d}")


if __name__ == "__main__":
    main()
