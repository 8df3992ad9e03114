"""A flash join: N prospects go from the join page to paid at once (the ¥9 re-entry rush
after a purge announcement), each in a browser session of its own: join form, submit,
the fake cashier, pay. Counts errors and duplicate member numbers; prints the rate and the
per-prospect latency. The app runs on 2 gunicorn workers; the prospects are separate
processes on loopback.

    bench/run flash_join --prospects 500
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhook_ingest import database, gunicorn, prepare, read  # noqa: E402

HIDDEN = re.compile(r'name="(csrf_token|submission_key)" type="hidden" value="([^"]*)"')


def _prospect(args) -> tuple[float, bool]:
    """One person's journey; (seconds, whether it ended on their member number)."""
    base, person = args
    session = requests.Session()
    start = time.perf_counter()
    try:
        page = session.get(f"{base}/join/demo/main", timeout=60).text
        data = dict(HIDDEN.findall(page))
        data.update(
            display_name=f"快闪{person}",
            contact_kind="wechat",
            contact_value=f"wxflash{person:06d}",
            accept_rules="y",
            provider="fake",
        )
        cashier = session.post(f"{base}/join/demo/main", data=data, timeout=60)
        token = dict(HIDDEN.findall(cashier.text))["csrf_token"]
        done = session.post(cashier.url, data={"csrf_token": token, "pay": "y"}, timeout=60)
        ok = done.ok and 'id="member-number"' in done.text
    except (requests.RequestException, KeyError):
        ok = False
    return time.perf_counter() - start, ok


def run(kind: str, prospects: int, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        with gunicorn("app:create_app()", url, PAYMENT_PROVIDERS="fake") as base:
            start = time.perf_counter()
            with ProcessPoolExecutor(max_workers=clients) as pool:
                results = list(pool.map(_prospect, [(base, i) for i in range(prospects)]))
            elapsed = time.perf_counter() - start
        numbers = read(url, "SELECT number FROM members WHERE number IS NOT NULL")
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "seconds": elapsed,
        "errors": sum(1 for _, ok in results if not ok),
        "duplicates": len(numbers) - len(set(numbers)),
        "gaps": (max(numbers) - len(numbers)) if numbers else 0,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prospects", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    print(
        f"flash join: {args.prospects} prospects, {args.clients} at a time, "
        f"gunicorn -c gunicorn.conf.py -w 2, {os.cpu_count()} CPUs"
    )
    print(
        f"{'database':10} {'seconds':>8} {'errors':>7} {'dup nos':>8} {'gaps':>5} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for kind in kinds:
        r = run(kind, args.prospects, args.clients)
        print(
            f"{kind:10} {r['seconds']:8.1f} {r['errors']:7d} {r['duplicates']:8d} "
            f"{r['gaps']:5d} {r['p50']:8.1f} {r['p99']:8.1f}"
        )


if __name__ == "__main__":
    main()
