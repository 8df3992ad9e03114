"""A flash join: N prospects go from the join page to paid within a minute (the ¥9
re-entry rush after a purge announcement), each in a browser session of its own: the join
page, the form submitted, the code sent to their e-mail typed in, the fake cashier paid,
the status page with their member number. Counts errors and duplicate member numbers;
prints how long each tap took (p50/p99 over every request) and each whole journey, timed
from when the prospect arrived. The app runs on 2 gunicorn workers; the prospects are
separate processes on loopback. No worker sends the codes here: each prospect reads theirs
from the outbox in the database, as a phone would show it.

Prints the whole run's seconds (from before the client processes start: the arrivals
span ``--over`` of them), how far behind the last arrival the last journey ended, the
journeys that failed, the member numbers given twice, missing below the highest, and
whether they are exactly 1..N for N prospects, the tap and journey percentiles in ms, and
the machine's load average before and after (the machine may be shared).

Prospects arrive evenly over ``--over`` seconds (60: the scenario). ``--over 0`` sends
them all at once, as fast as 16 clients go: a stress test of throughput, where the
latencies are mostly time spent queueing.

    bench/run flash_join --prospects 500 [--over 60]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import cache, partial
from pathlib import Path
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhook_ingest import database, gunicorn, prepare, read  # noqa: E402

HIDDEN = re.compile(r'name="(csrf_token|submission_key)" type="hidden" value="([^"]*)"')
CODE = re.compile(r"\b(\d{6})\b")


#: The latest message queued to an address (``:to``, a LIKE pattern): where a code went.
LATEST_CODE = sa.text(
    "SELECT body FROM outbox_messages WHERE CAST(routes AS TEXT) LIKE :to ORDER BY id DESC LIMIT 1"
)


def prospect_email(person: int) -> str:
    """Prospect number ``person``'s e-mail address, where their code goes."""
    return f"flash{person:06d}@example.com"


def join_form(page: str, person: int) -> dict[str, str]:
    """The join form of ``page`` as prospect number ``person`` fills it in (paying with
    ``fake``, their code sent to :func:`prospect_email`)."""
    form = dict(HIDDEN.findall(page))
    form.update(
        display_name=f"快闪{person}",
        wechat_id=f"wxflash{person:06d}",
        contact_kind="email",
        contact_value=prospect_email(person),
        accept_rules="y",
        provider="fake",
    )
    return form


def path_of(location: str) -> str:
    """The path (and query) of a redirect's ``Location``: the app's links are on
    PUBLIC_BASE_URL, which may not be where it is measured."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@cache
def _phone(url: str) -> sa.Engine:
    """The connection a client process reads codes through, kept for its prospects (a new
    connection per code costs the server as much as a tap does: that is not the app's)."""
    return sa.create_engine(url, pool_size=1, max_overflow=0)


def code_from_outbox(url: str, email: str) -> str:
    """The code in the latest message queued to ``email`` in the database at ``url``."""
    with _phone(url).connect() as connection:
        body = connection.execute(LATEST_CODE, {"to": f"%{email}%"}).scalar_one()
    return CODE.search(body).group(1)


def journey(
    bases: list[str], person: int, arrival: float, read_code: Callable[[str], str]
) -> tuple[float, list[float], bool]:
    """One person's journey, starting at ``arrival`` (a ``time.time()``), on the first of
    ``bases`` that answers (another instance when one is down): (seconds from arrival to
    the end, seconds of each tap, whether it ended on their member number). Redirects are
    followed by path: the app's links are on PUBLIC_BASE_URL, which may not be here."""
    session = requests.Session()
    # Each prospect from an address of their own (a documentation range, through the one
    # trusted proxy the server is told of), as on the street: joins are limited per client.
    session.headers["X-Forwarded-For"] = f"198.51.{100 + person // 250}.{person % 250 + 1}"
    time.sleep(max(0.0, arrival - time.time()))
    taps: list[float] = []
    email = prospect_email(person)

    def tap(method: str, path: str, **kwargs) -> requests.Response:
        for base in bases:
            start = time.perf_counter()
            try:
                response = session.request(
                    method, base + path, timeout=60, allow_redirects=False, **kwargs
                )
            except requests.ConnectionError:
                continue
            taps.append(time.perf_counter() - start)
            return response
        raise requests.ConnectionError(f"no instance answered {path}")

    try:
        form = join_form(tap("GET", "/join/demo/main").text, person)
        verify = path_of(tap("POST", "/join/demo/main", data=form).headers["Location"])
        token = dict(HIDDEN.findall(tap("GET", verify).text))["csrf_token"]
        proven = tap("POST", verify, data={"csrf_token": token, "code": read_code(email)})
        cashier = path_of(proven.headers["Location"])
        token = dict(HIDDEN.findall(tap("GET", cashier).text))["csrf_token"]
        paid = tap("POST", cashier, data={"csrf_token": token, "pay": "y"})
        done = tap("GET", path_of(paid.headers["Location"]))
        ok = done.ok and 'id="member-number"' in done.text
    except (requests.RequestException, KeyError, IndexError, AttributeError):
        ok = False
    return time.time() - arrival, taps, ok


def _prospect(args) -> tuple[float, list[float], bool]:
    base, url, person, arrival = args
    return journey([base], person, arrival, partial(code_from_outbox, url))


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


def run(kind: str, prospects: int, clients: int, over: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        with gunicorn(
            "app:create_app()", url, PAYMENT_PROVIDERS="fake", TRUSTED_PROXIES="1"
        ) as base:
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            with ProcessPoolExecutor(max_workers=clients) as pool:
                first = time.time() + 1  # once the client processes are up
                arrivals = [(base, url, i, first + over * i / prospects) for i in range(prospects)]
                results = list(pool.map(_prospect, arrivals))
            elapsed = time.perf_counter() - start
            behind = time.time() - arrivals[-1][3]
            load_after = os.getloadavg()[0]
        numbers = read(url, "SELECT number FROM members WHERE number IS NOT NULL")
    tap_p50, tap_p99 = _percentiles([tap for _, taps, _ in results for tap in taps])
    journey_p50, journey_p99 = _percentiles([seconds for seconds, _, _ in results])
    return {
        "seconds": elapsed,
        "behind": behind,
        "errors": sum(1 for *_, ok in results if not ok),
        "duplicates": len(numbers) - len(set(numbers)),
        "gaps": (max(numbers) - len(numbers)) if numbers else 0,
        "numbers ok": sorted(numbers) == list(range(1, prospects + 1)),
        "p50": tap_p50,
        "p99": tap_p99,
        "journey p50": journey_p50,
        "journey p99": journey_p99,
        "load": (load_before, load_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prospects", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--over", type=float, default=60, help="seconds the arrivals span")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    print(
        f"flash join: {args.prospects} prospects arriving over {args.over:g} s, "
        f"{args.clients} client processes, gunicorn -c gunicorn.conf.py -w 2, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'database':10} {'seconds':>8} {'behind':>7} {'errors':>7} {'dup nos':>8} "
        f"{'gaps':>5} {'1..N':>5} {'tap p50':>8} {'tap p99':>8} {'journey p50':>12} "
        f"{'journey p99':>12} {'load 1 min':>11}"
    )
    for kind in kinds:
        r = run(kind, args.prospects, args.clients, args.over)
        print(
            f"{kind:10} {r['seconds']:8.1f} {r['behind']:7.1f} {r['errors']:7d} "
            f"{r['duplicates']:8d} {r['gaps']:5d} {'yes' if r['numbers ok'] else 'no':>5} "
            f"{r['p50']:8.1f} {r['p99']:8.1f} {r['journey p50']:12.1f} "
            f"{r['journey p99']:12.1f} {r['load'][0]:5.1f}→{r['load'][1]:<5.1f}"
        )


if __name__ == "__main__":
    main()
