"""The join page under load against a bare Flask + Jinja page of the same size, both on
2 gunicorn workers in the same run, the load from separate processes on loopback.

    bench/run page_render --requests 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhook_ingest import database, gunicorn, load, prepare, report  # noqa: E402


def run(kind: str, count: int, clients: int) -> list[tuple[str, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        get = [(b"", {})] * count
        with gunicorn("app:create_app()", url) as base:
            size = len(
                requests.get(
                    f"{base}/join/demo", headers={"Host": "qunmen.test"}, timeout=10
                ).content
            )
            ours = load(f"{base}/join/demo", get, clients, method="GET")
        os.environ["BARE_PAGE_BYTES"] = str(size)
        with gunicorn("bench.bare:create_app()", url) as base:
            bare = load(f"{base}/page", get, clients, method="GET")
        return [(f"bare Jinja page ({size} B)", bare), ("join page /join/demo", ours)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    report(
        f"page render: {args.requests} requests, {args.clients} client processes, "
        f"gunicorn -c gunicorn.conf.py -w 2, {os.cpu_count()} CPUs",
        "pages/s",
        ["sqlite", "postgres"] if args.database == "both" else [args.database],
        lambda kind: run(kind, args.requests, args.clients),
    )


if __name__ == "__main__":
    main()
