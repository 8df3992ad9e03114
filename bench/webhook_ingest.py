"""Webhook ingest under load: signed Stripe events and WeChat Pay notifications (API v2's
XML, and API v3's signed and encrypted JSON on an app with v3 credentials), each confirming
a fresh payment, against a bare Flask endpoint doing one INSERT.

Both apps run side by side on 2 gunicorn workers; the load comes from separate client
processes on loopback. Prints events per second, the ratio to the bare endpoint, and
latency percentiles. Run through bench/run (it sets up the databases):

    bench/run webhook_ingest --events 2000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import flask_migrate
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.bare import bare_metadata  # noqa: E402
from core.db import db  # noqa: E402
from membership.cli import seed_demo_community  # noqa: E402
from membership.models import Group, Tier  # noqa: E402
from tests import fake_apis  # noqa: E402
from tests.helpers import (  # noqa: E402
    checkout_session,
    open_payment,
    stripe_delivery,
    wechat_paid,
    wechat_v3_paid,
)

SETTINGS = {
    "SECRET_KEY": "bench-secret-key",
    "PAYMENT_PROVIDERS": "stripe,wechatpay",
    "STRIPE_SECRET_KEY": fake_apis.STRIPE_SECRET_KEY,
    "STRIPE_WEBHOOK_SECRET": fake_apis.STRIPE_WEBHOOK_SECRET,
    "WECHATPAY_APP_ID": fake_apis.WECHAT_APP_ID,
    "WECHATPAY_MCH_ID": fake_apis.WECHAT_MCH_ID,
    "WECHATPAY_API_KEY": fake_apis.WECHAT_API_KEY,
    "SERVER_NAME": "qunmen.test",
    "PUBLIC_BASE_URL": "http://qunmen.test",
    # Plain-http cookies, and the fake provider for the scenarios that pay with it.
    "QUNMEN_DEMO": "1",
    # The work measured, not a log line a request: in process as under gunicorn.
    "LOG_LEVEL": "warning",
}
#: The v3 scenarios' app: WeChat Pay v3 credentials too (public-key mode; ingesting makes
#: no call to the API, so its address is a closed port).
V3_SETTINGS = fake_apis.wechatpay_v3_settings("http://127.0.0.1:9")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def database(kind: str, scratch: Path):
    """A new, empty database URL: a SQLite file, or a database on TEST_DATABASE_URL."""
    if kind == "sqlite":
        yield f"sqlite:///{scratch / 'bench.sqlite3'}"
        return
    base = os.environ["TEST_DATABASE_URL"]
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def prepare(url: str, events: int) -> dict[str, list]:
    """Migrate, seed, open ``events`` payments per provider; their signed deliveries (for
    ``wechatpay_v3``, the payments: v3 notifications are signed just before they are sent,
    since they are refused five minutes after their timestamp)."""
    os.environ.update(SETTINGS)
    os.environ["DATABASE_URL"] = url
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    deliveries: dict[str, list] = {"stripe": [], "wechatpay": [], "wechatpay_v3": []}
    people = {"wechatpay": 0, "stripe": events, "wechatpay_v3": 2 * events}
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        seed_demo_community()
        group = db.session.scalar(sa.select(Group).where(Group.name == "正式一群"))
        group.platform, group.capacity = "telegram", 200_000  # room for everyone
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        for provider in deliveries:
            for i in range(events):
                payment = open_payment(tier, provider.removesuffix("_v3"), i + people[provider])
                db.session.flush()
                if provider == "stripe":
                    deliveries[provider].append(
                        stripe_delivery("checkout.session.completed", checkout_session(payment))
                    )
                elif provider == "wechatpay_v3":
                    deliveries[provider].append(
                        SimpleNamespace(
                            id=payment.id,
                            public_id=payment.public_id,
                            amount=payment.amount,
                            currency=payment.currency,
                        )
                    )
                else:
                    deliveries[provider].append(
                        (wechat_paid(payment), {"Content-Type": "text/xml"})
                    )
        db.session.commit()
        bare_metadata.create_all(db.engine)
        for engine in db.engines.values():
            engine.dispose()
    return deliveries


@contextmanager
def gunicorn(app_spec: str, url: str, **settings: str):
    port = free_port()
    env = {
        **os.environ,
        **SETTINGS,
        "DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        # As in production: platform calls are a separate worker's job, not the web's.
        "QUEUE_IN_PROCESS": "0",
        **settings,
    }
    process = subprocess.Popen(  # noqa: S603 (our interpreter, our arguments)
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            app_spec,
        ],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: How long a server may take to boot (gunicorn binds its port before its workers have
#: loaded the app: a busy machine takes a while).
BOOT_SECONDS = 120


def wait_until_serving(base: str, process: subprocess.Popen) -> None:
    """Return once the server at ``base`` answers /healthz; raise if ``process`` ended or
    :data:`BOOT_SECONDS` passed first."""
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {base} exited with {process.returncode}")
        try:
            requests.get(base + "/healthz", timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} did not answer in {BOOT_SECONDS} s") from None
            time.sleep(0.2)


def _send(args) -> list[tuple[float, int]]:
    url, batch, method = args
    session = requests.Session()
    results = []
    for body, headers in batch:
        start = time.perf_counter()
        status = session.request(
            method,
            url,
            data=body or None,
            headers={**headers, "Host": "qunmen.test"},
            timeout=30,
            allow_redirects=False,  # a form's answer is its redirect
        ).status_code
        results.append((time.perf_counter() - start, status))
    return results


def load(url: str, deliveries: list, clients: int, method: str = "POST") -> dict[str, float]:
    """Send every delivery from ``clients`` processes at once; rate and latencies."""
    batches = [(url, deliveries[i::clients], method) for i in range(clients)]
    return run_batches(_send, batches, clients)


def run_batches(send, batches: list, clients: int) -> dict[str, float]:
    """``send`` each batch in a process of its own, all at once (``send`` gives a
    (seconds, status) per request); the rate, errors and latency percentiles."""
    with ProcessPoolExecutor(max_workers=clients) as pool:
        start = time.perf_counter()
        results = [r for batch in pool.map(send, batches) for r in batch]
        elapsed = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    return {
        "rate": len(results) / elapsed,
        "errors": sum(1 for _, status in results if status >= 400),
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max": latencies[-1] * 1000,
    }


def run(kind: str, events: int, clients: int) -> list[tuple[str, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        deliveries = prepare(url, events)
        bare_body = [
            (body, {"Content-Type": "application/json"}) for body, _ in deliveries["stripe"]
        ]
        rows = []
        with gunicorn("bench.bare:create_app()", url) as base:
            rows.append(("bare INSERT endpoint", load(f"{base}/ingest", bare_body, clients)))
        with gunicorn("app:create_app()", url) as base:
            stripe_url, wechat_url = f"{base}/webhooks/stripe", f"{base}/webhooks/wechatpay"
            rows.append(("Stripe, fresh payments", load(stripe_url, deliveries["stripe"], clients)))
            rows.append(("Stripe, duplicates", load(stripe_url, deliveries["stripe"], clients)))
            rows.append(
                ("WeChat Pay, fresh payments", load(wechat_url, deliveries["wechatpay"], clients))
            )
            rows.append(
                ("WeChat Pay, duplicates", load(wechat_url, deliveries["wechatpay"], clients))
            )
        with gunicorn("app:create_app()", url, **V3_SETTINGS) as base:
            v3 = [wechat_v3_paid(payment) for payment in deliveries["wechatpay_v3"]]
            wechat_url = f"{base}/webhooks/wechatpay"
            rows.append(("WeChat Pay v3, fresh payments", load(wechat_url, v3, clients)))
            rows.append(("WeChat Pay v3, duplicates", load(wechat_url, v3, clients)))
        return rows


def report(header: str, unit: str, kinds: list[str], run_kind) -> None:
    """Print one table: each database's scenarios (the bare baseline first) with their
    rate, ratio to the baseline and latencies."""
    print(header)
    print(
        f"{'database':10} {'scenario':30} {unit:>9} {'vs bare':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'errors':>6}"
    )
    for kind in kinds:
        rows = run_kind(kind)
        bare = rows[0][1]["rate"]
        for name, r in rows:
            print(
                f"{kind:10} {name:30} {r['rate']:9.1f} {r['rate'] / bare:8.2f} "
                f"{r['p50']:8.1f} {r['p99']:8.1f} {r['max']:8.1f} {r['errors']:6d}"
            )


def read(url: str, sql: str, **params) -> list:
    """The values of ``sql``'s first column in a scenario's database, after its run."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(sql), params).scalars().all()
    finally:
        engine.dispose()


def rate_main(doc: str, what: str, option: str, default: int, unit: str, run) -> None:
    """The command line of a rate scenario (``--<option> N --clients C --database D``):
    runs ``run(kind, N, C)`` on each database and prints its table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(f"--{option}", type=int, default=default)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(SETTINGS)
    count = getattr(args, option)
    report(
        f"{what}: {count} {option}, {args.clients} client processes, "
        f"gunicorn -c gunicorn.conf.py -w 2, {os.cpu_count()} CPUs",
        unit,
        ["sqlite", "postgres"] if args.database == "both" else [args.database],
        lambda kind: run(kind, count, args.clients),
    )


if __name__ == "__main__":
    rate_main(__doc__, "webhook ingest, per scenario", "events", 1000, "events/s", run)
