"""The join page under load against a bare Flask + Jinja page of the same size, both on
2 gunicorn workers in the same run, the load from separate processes on loopback.

    bench/run page_render --requests 3000
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhook_ingest import database, gunicorn, load, prepare, rate_main  # noqa: E402


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


if __name__ == "__main__":
    rate_main(__doc__, "page render", "requests", 3000, "pages/s", run)
