"""The money path and the admin pages at 1,000 and at 100,000 members and payments, in
process: CPU milliseconds and SQL statements per request, beside bare baselines in the same
run (one INSERT for the writes, one indexed SELECT for the pages). Prints each scenario's
cost, its ratio to its baseline (baseline cost / scenario cost: higher is better, 1.0 is
as cheap as the baseline) and how much it grew from the small size to the large one.

    bench/run scale                       # 1,000 and 100,000 members, both databases
    bench/run scale --sizes 1000 20000 --database sqlite
    bench/run scale --only dashboard      # the dashboard's scenarios and their baseline

"join POST" opens the join form and sends it (both measured); "join POST alone" sends a
form opened beforehand, the order creation by itself. "webhook, fresh, ORM" delivers as
"webhook, fresh" does with the paid join's fast path off (``PAID_JOIN_FAST_PATH``): the ORM
path it stands beside, in the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate
import sqlalchemy as sa
from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench import bare  # noqa: E402
from bench.announce import EMAIL, PASSWORD, logged_in_client  # noqa: E402
from bench.seed import seed_members, settle  # noqa: E402
from bench.webhook_ingest import SETTINGS, database  # noqa: E402
from core.auth import create_staff_user  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db  # noqa: E402
from membership.cli import seed_demo_community  # noqa: E402
from membership.models import Tier  # noqa: E402
from tests.helpers import (  # noqa: E402
    checkout_session,
    hidden_value,
    open_payment,
    stripe_delivery,
)

#: Requests measured per scenario (after a few unmeasured ones warm the caches).
ROUNDS = {"write": 150, "page": 60}
WARM = 10


class Statements:
    """Counts the SQL statements an engine runs."""

    def __init__(self, engine: sa.Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args, **_kwargs) -> None:
        self.count += 1


def measure(send, rounds: int, statements: Statements) -> dict[str, float]:
    """CPU ms (median of rounds), wall ms (median) and statements per call of ``send(i)``."""
    for i in range(WARM):
        send(i)
    cpu, wall, counted = [], [], []
    for i in range(WARM, WARM + rounds):
        before, c0, w0 = statements.count, time.process_time(), time.perf_counter()
        send(i)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        counted.append(statements.count - before)
    return {
        "cpu": statistics.median(cpu) * 1000,
        "wall": statistics.median(wall) * 1000,
        "statements": statistics.median(counted),
    }


def prepare(url: str, members: int):
    """The demo community with ``members`` paid members, payments to deliver, a staff
    login; the app and the deliveries."""
    os.environ.update(SETTINGS)
    os.environ["DATABASE_URL"] = url
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "QUEUE_IN_PROCESS": False})
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        community = seed_demo_community()
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        seed_members(community, tier, members, now=utcnow(), paid=True)
        deliveries = []
        for i in range(WARM + ROUNDS["write"]):
            payment = open_payment(tier, "stripe", members + i)
            db.session.flush()
            deliveries.append(
                stripe_delivery("checkout.session.completed", checkout_session(payment))
            )
        create_staff_user(EMAIL, "bench", PASSWORD, actor="bench")
        db.session.commit()
        bare.bare_metadata.create_all(db.engine)
        settle(db.engine)
    return app, deliveries


def run(kind: str, members: int, only: list[str]) -> dict[str, dict[str, float]]:
    """Each scenario's cost at ``members`` members on the ``kind`` database; only those
    whose names contain a word of ``only`` when given (the baselines always)."""

    def wanted(name: str) -> bool:
        return not only or any(word in name for word in only)

    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        app, deliveries = prepare(url, members)
        baseline = bare.create_app()
        with app.app_context():
            ours = Statements(db.engine)
        with baseline.app_context():
            theirs = Statements(db.engine)
        plain = baseline.test_client()
        results = {
            "bare INSERT": measure(
                lambda i: plain.post("/ingest", data=deliveries[i][0]), ROUNDS["write"], theirs
            ),
            "bare indexed SELECT": measure(
                lambda i: plain.get(f"/one?n={i * 7 % members + 1}"), ROUNDS["page"], theirs
            ),
        }
        client = app.test_client()

        def deliver(i: int) -> None:
            body, headers = deliveries[i]
            assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200

        writes = {
            "webhook, fresh": deliver,
            "webhook, duplicate": deliver,
            "join POST": lambda i: _join(app, i),
        }
        for name, send in writes.items():
            if wanted(name) or (name == "webhook, duplicate" and wanted("webhook, fresh")):
                results[name] = measure(send, ROUNDS["write"], ours)
        if wanted("webhook, fresh, ORM"):
            # The same deliveries as "webhook, fresh", with the paid join's fast path off.
            more = _more_deliveries(app, members + len(deliveries))
            app.config["PAID_JOIN_FAST_PATH"] = False
            try:
                results["webhook, fresh, ORM"] = measure(
                    lambda i: _ok(
                        client.post("/webhooks/stripe", data=more[i][0], headers=more[i][1])
                    ),
                    ROUNDS["write"],
                    ours,
                )
            finally:
                app.config["PAID_JOIN_FAST_PATH"] = True
        if wanted("join POST alone"):
            forms = _opened_join_forms(app, WARM + ROUNDS["write"])
            results["join POST alone"] = measure(
                lambda i: _send_join(*forms[i]), ROUNDS["write"], ours
            )
        if wanted("join page"):
            results["join page"] = measure(lambda i: client.get("/join/demo"), ROUNDS["page"], ours)
        admin, _token = logged_in_client(app)
        community = "/admin/communities/1"
        for name, path in (
            ("admin members list", f"{community}/members?page=3"),
            ("admin member search", f"{community}/members?q=成员4242"),
            ("admin dashboard", "/admin/"),
            ("admin dashboard, 90 days", "/admin/?days=90&by=week"),
        ):
            if wanted(name):
                results[name] = measure(
                    lambda i, path=path: _ok(admin.get(path)), ROUNDS["page"], ours
                )
        if wanted("admin dashboard"):
            _shows_real_figures(admin.get("/admin/"), members)
        return results


def _more_deliveries(app, first_person: int) -> list[tuple[bytes, dict[str, str]]]:
    """Stripe deliveries for as many new payments as :func:`prepare` made, of people
    numbered from ``first_person`` on (committed, not measured)."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        deliveries = []
        for i in range(WARM + ROUNDS["write"]):
            payment = open_payment(tier, "stripe", first_person + i)
            db.session.flush()
            deliveries.append(
                stripe_delivery("checkout.session.completed", checkout_session(payment))
            )
        db.session.commit()
    return deliveries


def _shows_real_figures(response, members: int) -> None:
    """The dashboard measured drew the seeded members and their payments (its daily
    figures were filled), not an empty page."""
    page = response.get_data(as_text=True)
    paying = re.search(r'id="kpi-paying" data-current="(\d+)"', page)
    revenue = re.search(r'id="kpi-revenue-CNY" data-current="(\d+)"', page)
    assert paying and int(paying[1]) >= members, paying
    assert revenue and int(revenue[1]) > 0, revenue


def _ok(response):
    assert response.status_code == 200, response.status_code
    return response


def _join(app, i: int) -> None:
    """One prospect's join form: opened (not measured), sent (measured by the caller)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    html = client.get("/join/demo/main").text
    response = client.post(
        "/join/demo/main",
        data={
            "csrf_token": hidden_value(html, "csrf_token"),
            "submission_key": hidden_value(html, "submission_key"),
            "display_name": f"新人{i}",
            "wechat_id": f"newcomer_{i}",
            "contact_kind": "phone",
            "contact_value": f"139{i:08d}",
            "accept_rules": "y",
            "provider": "stripe",
        },
    )
    assert response.status_code == 302, response.status_code


def _opened_join_forms(app, count: int) -> list[tuple[object, dict[str, str]]]:
    """``count`` prospects' join forms, each opened in a session of its own (not measured,
    as a phone has it open before it sends it) and filled in: (client, fields)."""
    forms = []
    for i in range(count):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.200.{i // 256 % 256}.{i % 256}"
        html = client.get("/join/demo/main").text
        fields = {
            "csrf_token": hidden_value(html, "csrf_token"),
            "submission_key": hidden_value(html, "submission_key"),
            "display_name": f"快闪{i}",
            "wechat_id": f"opened_{i}",
            "contact_kind": "phone",
            "contact_value": f"137{i:08d}",
            "accept_rules": "y",
            "provider": "stripe",
        }
        forms.append((client, fields))
    return forms


def _send_join(client, fields: dict[str, str]) -> None:
    """An opened join form sent (see :func:`_opened_join_forms`): the POST alone."""
    response = client.post("/join/demo/main", data=fields)
    assert response.status_code == 302, response.status_code


#: Which baseline each scenario is measured against.
BASELINE = {
    "webhook, fresh": "bare INSERT",
    "webhook, duplicate": "bare INSERT",
    "webhook, fresh, ORM": "bare INSERT",
    "join POST": "bare INSERT",
    "join POST alone": "bare INSERT",
    "join page": "bare indexed SELECT",
    "admin members list": "bare indexed SELECT",
    "admin member search": "bare indexed SELECT",
    "admin dashboard": "bare indexed SELECT",
    "admin dashboard, 90 days": "bare indexed SELECT",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 100_000])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--only", nargs="*", default=[], help="Scenarios whose names contain these words."
    )
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    small, large = args.sizes
    print(f"in process, CPU ms per request (median), {os.cpu_count()} CPUs")
    print(
        f"{'database':9} {'scenario':22} {'members':>8} {'CPU ms':>7} {'wall ms':>8} "
        f"{'stmts':>6} {'vs bare':>8} {'growth':>7}"
    )
    for kind in kinds:
        sized = {size: run(kind, size, args.only) for size in (small, large)}
        for size in (small, large):
            rows = sized[size]
            for name, r in rows.items():
                base = rows.get(BASELINE.get(name, ""), r)
                growth = r["cpu"] / sized[small][name]["cpu"]
                print(
                    f"{kind:9} {name:22} {size:8d} {r['cpu']:7.2f} {r['wall']:8.2f} "
                    f"{r['statements']:6.0f} {base['cpu'] / r['cpu']:8.2f} {growth:7.2f}"
                )


if __name__ == "__main__":
    main()
