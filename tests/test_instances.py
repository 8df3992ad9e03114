"""Past one machine: two instances of the product (each ``bin/serve``: gunicorn and a queue
worker, separate processes with instance folders of their own and the same settings)
against one PostgreSQL behind PgBouncer in transaction mode, as ``bin/test`` runs it
(``bin/with-postgres --pgbouncer``). Payments confirmed across both, one instance killed
mid-run: no payment lost, no number given twice, numbers 1..N; ``flask check`` passes on
the database, and again on a copy restored from ``pg_dump``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from bench.webhook_ingest import free_port, wait_until_serving
from core.db import db
from membership.cli import seed_demo_community
from membership.models import Member, PlatformTask, TaskStatus, Tier
from payments.models import LedgerEntry, Payment, PaymentStatus
from tests import fake_apis
from tests.conftest import fresh_database
from tests.helpers import checkout_session, open_payment, stripe_delivery

ROOT = Path(__file__).resolve().parent.parent
PAYERS = 200
#: Deliveries confirmed before one instance is killed.
KILL_AFTER = PAYERS // 3

pytestmark = [
    pytest.mark.committing,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_PGBOUNCER") or not os.environ.get("TEST_DATABASE_URL"),
        reason="needs PostgreSQL behind PgBouncer: bin/with-postgres --pgbouncer",
    ),
]


def test_pgbouncer_turns_prepared_statements_off(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        assert db.engine.raw_connection().driver_connection.prepare_threshold is None


def _settings(database_url: str, apis, instance: Path) -> dict[str, str]:
    """One instance's environment: the same settings as the other's, but for its port and
    its instance folder."""
    instance.mkdir()
    return {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": database_url,
        "DATABASE_PGBOUNCER": "1",
        "SECRET_KEY": "instances-test-secret-key",
        "PUBLIC_BASE_URL": "https://join.example.com",
        "PAYMENT_PROVIDERS": "stripe",
        "STRIPE_SECRET_KEY": fake_apis.STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": fake_apis.STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": apis.base_url,
        "INSTANCE_PATH": str(instance),
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "warning",
    }


def _start(settings: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(  # noqa: S603 (our script)
            [str(ROOT / "bin" / "serve")],
            env=settings,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _flask(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 (our interpreter, our arguments)
        [str(ROOT / ".venv" / "bin" / "flask"), *args],
        env={**settings, "FLASK_APP": "app"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _prepare(app) -> tuple[list[tuple[bytes, dict[str, str]]], int]:
    """The demo community with room for everyone, PAYERS open Stripe payments, and the
    signed deliveries confirming them; the community's id."""
    with app.app_context():
        community = seed_demo_community()
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payments = [open_payment(tier, "stripe", person) for person in range(PAYERS)]
        db.session.commit()
        deliveries = [
            stripe_delivery("checkout.session.completed", checkout_session(payment))
            for payment in payments
        ]
        return deliveries, community.id


def _platform_tasks_done(app) -> int:
    with app.app_context():
        return db.session.scalar(
            sa.select(sa.func.count(PlatformTask.id)).where(PlatformTask.status == TaskStatus.DONE)
        )


def test_two_instances_one_killed_lose_no_payment(tmp_path, _api_server, apis):
    with fresh_database(tmp_path, _api_server) as app:
        deliveries, community_id = _prepare(app)
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        url = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        settings = [_settings(url, apis, tmp_path / name) for name in ("a", "b")]
        instances = [_start(s, tmp_path / f"{n}.log") for s, n in zip(settings, "ab", strict=True)]
        try:
            bases = [f"http://127.0.0.1:{s['PORT']}" for s in settings]
            for base, process in zip(bases, instances, strict=True):
                wait_until_serving(base, process)
            confirmed, kill_now = [0], threading.Event()
            lock = threading.Lock()

            def deliver(i: int) -> int | None:
                """Deliver the i-th event, half to each instance; an instance that does not
                answer is retried on the other, as providers retry. The tries it took."""
                body, headers = deliveries[i]
                for attempt in range(40):
                    base = bases[(i + attempt) % 2]
                    try:
                        answer = requests.post(
                            f"{base}/webhooks/stripe", data=body, headers=headers, timeout=30
                        )
                    except requests.RequestException:
                        answer = None
                    if answer is not None and answer.status_code == 200:
                        with lock:
                            confirmed[0] += 1
                            if confirmed[0] == KILL_AFTER:
                                kill_now.set()
                        return attempt + 1
                    time.sleep(0.1)
                return None

            with ThreadPoolExecutor(max_workers=16) as pool:
                tries = pool.map(deliver, range(PAYERS))
                assert kill_now.wait(120), "the deliveries never got a third of the way"
                os.killpg(instances[0].pid, signal.SIGKILL)  # web, its workers, its queue worker
                killed_at = confirmed[0]
                tries = list(tries)
            # The surviving queue worker takes a round every 5 seconds: the deliveries may
            # all be in before its next one, so wait for it rather than stop it first.
            deadline = time.monotonic() + 60
            while not _platform_tasks_done(app) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for process in instances:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in instances:
                process.wait(timeout=60)

        assert killed_at < PAYERS, "instance a was killed after the run, not during it"
        assert None not in tries, "a delivery was never accepted"
        assert max(tries) > 1, "no delivery needed a second try: was a killed?"
        with app.app_context():
            statuses = db.session.scalars(sa.select(Payment.status)).all()
            assert statuses == [PaymentStatus.CONFIRMED] * PAYERS
            numbers = db.session.scalars(
                sa.select(Member.number).where(Member.community_id == community_id)
            ).all()
            assert sorted(numbers) == list(range(1, PAYERS + 1))
            assert db.session.scalar(sa.select(sa.func.count(LedgerEntry.id))) == PAYERS
            assert _platform_tasks_done(app), "the queue workers did nothing"

        check = _flask(settings[1], "check")
        assert check.returncode == 0, check.stdout + check.stderr
        _restore_and_check(url, settings[1], numbers)


def _restore_and_check(url: str, settings: dict[str, str], numbers: list[int]) -> None:
    """The drill: ``pg_dump`` of the database (from the server itself, not through
    PgBouncer), restored into a fresh database, where ``flask check`` passes and the
    members are all there."""
    direct = sa.make_url(os.environ.get("TEST_DATABASE_DIRECT_URL") or url)
    source = direct.set(database=sa.make_url(url).database)
    copy = direct.set(database=f"restored_{uuid.uuid4().hex[:10]}")
    libpq = {
        "PGHOST": source.host,
        "PGPORT": str(source.port),
        "PGUSER": source.username,
        "PATH": os.environ["PATH"],
    }
    tools = Path(os.environ.get("PG_BIN", "/usr/bin"))
    dump = Path(settings["INSTANCE_PATH"]) / "qunmen.dump"
    commands = [
        [tools / "pg_dump", "--format=custom", f"--file={dump}", source.database],
        [tools / "createdb", copy.database],
        [tools / "pg_restore", "--exit-on-error", f"--dbname={copy.database}", dump],
    ]
    try:
        for command in commands:
            subprocess.run(command, env=libpq, check=True, timeout=300)  # noqa: S603
        restored = {**settings, "DATABASE_URL": copy.render_as_string(hide_password=False)}
        restored.pop("DATABASE_PGBOUNCER")
        restored["QUNMEN_LOCALE"] = "en"
        check = _flask(restored, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "checks passed" in check.stdout
        engine = sa.create_engine(copy)
        with engine.connect() as connection:
            copied = connection.scalars(sa.text("SELECT number FROM members")).all()
        engine.dispose()
        assert sorted(copied) == sorted(numbers)
    finally:
        subprocess.run(  # noqa: S603
            [tools / "dropdb", "--if-exists", "--force", copy.database], env=libpq, check=False
        )
