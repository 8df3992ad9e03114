"""The revenue export of a million movements against a raw dump of the same rows.

The rows are generated in SQL (orders, payments, applications, members, ledger entries
of the demo community over a month), then, in the same run: the raw dump of the same
joined rows (``sqlite3 -csv`` / ``COPY … TO STDOUT``), the least Python can do (the same
rows read through SQLAlchemy's connection, and written by the csv module, nothing
converted), and ``flask export-revenue`` to CSV (on SQLite with its default ``--jobs``,
a process per CPU), each timed, the export's peak memory (of its largest process)
measured. Run through bench/run:

    bench/run export_revenue --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.webhook_ingest import SETTINGS, database  # noqa: E402
from core.db import db  # noqa: E402
from membership.cli import seed_demo_community  # noqa: E402
from membership.models import Tier  # noqa: E402

SECONDS_IN_MONTH = 30 * 86400

#: The rows the export reads, as plain SQL for the raw dump.
RAW_QUERY = """
SELECT l.created_at, l.kind, o.public_id, m.number_label, o.product, l.provider,
       l.provider_transaction_id, l.amount, l.currency, l.coupon_code, l.discount
FROM ledger_entries l JOIN orders o ON o.id = l.order_id
LEFT JOIN members m ON m.id = o.member_id
WHERE o.community_id = {community_id}
ORDER BY l.id
"""


def _numbers(dialect: str, rows: int) -> tuple[str, str]:
    """A numbers source 1..rows and a timestamp expression spread over a month."""
    if dialect == "sqlite":
        source = (
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
        )
        stamp = f"datetime('2026-11-01', '+' || (i % {SECONDS_IN_MONTH}) || ' seconds')"
        return source, stamp
    source = f"WITH n(i) AS (SELECT generate_series(1, {rows})) "
    stamp = f"timestamptz '2026-11-01 00:00:00+00' + (i % {SECONDS_IN_MONTH}) * interval '1 second'"
    return source, stamp


def generate(url: str, rows: int) -> int:
    """Fill a new database with ``rows`` paid orders; returns the community's id."""
    os.environ.update(SETTINGS)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        flask_migrate.upgrade(directory=str(ROOT / "migrations"))
        community = seed_demo_community()
        db.session.commit()
        tier_id = db.session.scalar(sa.select(Tier.id).where(Tier.code == "main"))
        source, stamp = _numbers(db.engine.dialect.name, rows)
        pad = (
            "lpad(cast(i as text), 7, '0')"
            if db.engine.dialect.name != "sqlite"
            else ("substr('0000000' || i, -7)")
        )
        statements = [
            f"INSERT INTO members (id, community_id, display_name, contact_kind, contact_value,"
            f" number, number_label, created_at) SELECT i, {community.id}, '成员' || i, 'wechat',"
            f" 'wx' || i, i, {pad}, {stamp} FROM n",
            f"INSERT INTO orders (id, public_id, amount, list_amount, currency, description,"
            f" community_id, product, member_id, status, created_at, expires_at, paid_at)"
            f" SELECT i, 'ord' || i, 9900, 9900, 'CNY', 'bench', {community.id}, '正式成员',"
            f" i, 'paid', {stamp}, {stamp}, {stamp} FROM n",
            f"INSERT INTO payments (id, public_id, order_id, provider, amount, currency, status,"
            f" return_url, cancel_url, created_at, confirmed_at, method, provider_data)"
            f" SELECT i, 'pay' || i, i, 'wechatpay', 9900, 'CNY', 'confirmed', '/', '/',"
            f" {stamp}, {stamp}, 'native', '{{}}' FROM n",
            f"INSERT INTO applications (id, public_id, submission_key, community_id, tier_id,"
            f" display_name, contact_kind, contact_value, rules_accepted_at, status, order_id,"
            f" member_id, created_at, answers) SELECT i, 'app' || i, 'key' || i, {community.id},"
            f" {tier_id}, '成员' || i, 'wechat', 'wx' || i, {stamp}, 'admitted', i, i, {stamp},"
            f" '{{}}' FROM n",
            f"INSERT INTO ledger_entries (id, created_at, kind, amount, currency, order_id,"
            f" payment_id, provider, provider_transaction_id, discount) SELECT i, {stamp},"
            f" 'payment', 9900, 'CNY', i, i, 'wechatpay', '4200' || i, 0 FROM n",
        ]
        for statement in statements:
            db.session.execute(sa.text(source + statement))
        community_id = community.id
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            # As autovacuum would leave them: otherwise the first command to read the new
            # rows (the raw dump) also writes their hint bits, and is timed doing it.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")
        for engine in db.engines.values():
            engine.dispose()
    return community_id


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and the peak resident memory (MB) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) // 1024


#: The least a Python program can do: read the raw query's rows and write them as CSV.
PYTHON_DUMP = """
import csv, sys
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1])
with engine.connect() as connection, open(sys.argv[3], "w", newline="") as out:
    result = connection.execution_options(stream_results=True).exec_driver_sql(sys.argv[2])
    writer = csv.writer(out)
    for rows in result.partitions(5000):
        writer.writerows(rows)
"""


def run(kind: str, rows: int) -> tuple[float, float, float, int]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        query = RAW_QUERY.format(community_id=generate(url, rows))
        if kind == "sqlite":
            raw, _ = timed(["sqlite3", "-csv", url.removeprefix("sqlite:///"), query])
        else:
            libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
            copy = f"COPY ({query}) TO STDOUT WITH CSV"
            raw, _ = timed(["psql", "-q", "-X", libpq, "-c", copy])
        env = {
            **os.environ,
            **SETTINGS,
            "DATABASE_URL": url,
            "FLASK_APP": "app",
            "QUEUE_IN_PROCESS": "0",
            "LOG_LEVEL": "WARNING",
        }
        out = Path(scratch) / "revenue.csv"
        ours, peak = timed(
            [
                sys.executable,
                "-m",
                "flask",
                "export-revenue",
                "--community",
                "demo",
                "--from",
                "2026-10-31",
                "--to",
                "2026-12-01",
                "--out",
                str(out),
            ],
            env=env,
        )
        # After the export, so that the export's peak memory is its own, not this one's.
        python, _ = timed(
            [sys.executable, "-c", PYTHON_DUMP, url, query, str(Path(scratch) / "python.csv")]
        )
        lines = sum(1 for _ in out.open(encoding="utf-8")) - 1
        assert lines == rows, f"exported {lines} rows of {rows}"
        return raw, python, ours, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    print(f"revenue export: {args.rows} movements, {os.cpu_count()} CPUs")
    print(
        f"{'database':10} {'raw dump s':>10} {'python s':>9} {'export s':>9} {'ratio':>6} "
        f"{'python':>7} {'peak MB':>8}"
    )
    for kind in kinds:
        raw, python, ours, peak = run(kind, args.rows)
        print(
            f"{kind:10} {raw:10.1f} {python:9.1f} {ours:9.1f} {ours / raw:6.2f} "
            f"{python / raw:7.2f} {peak:8d}"
        )


if __name__ == "__main__":
    main()
