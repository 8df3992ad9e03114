"""The API at 100,000 members: a member looked up by number (``GET /api/v1/members?number=N``)
and the members list paged by its cursor (``?after=…&limit=50``), each against a bare JSON
endpoint doing one indexed SELECT of the same rows, both on 2 gunicorn workers in the same
run. The API's requests carry a token (looked up, its rate limit claimed and committed).

    bench/run api_lookup --requests 3000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import requests
import sqlalchemy as sa
from flask import Flask, jsonify, request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.tokens import create_token  # noqa: E402
from app import create_app  # noqa: E402
from bench.webhook_ingest import SETTINGS, database, gunicorn, prepare, run_batches  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db, init_db  # noqa: E402
from membership.models import Community, Member, Membership, MembershipStatus, Tier  # noqa: E402

MEMBERS = 100_000
PAGE = 50


def bare_app() -> Flask:
    """One indexed SELECT per request, as JSON: a member by number, or a page by id."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    init_db(app)
    members = Member.__table__
    columns = (members.c.id, members.c.number, members.c.number_label, members.c.display_name)

    @app.get("/bare/members")
    def bare_members():
        query = sa.select(*columns).where(members.c.community_id == 1)
        if "number" in request.args:
            query = query.where(members.c.number == int(request.args["number"]))
        else:
            query = query.where(members.c.id > int(request.args["after"]))
            query = query.order_by(members.c.id).limit(PAGE)
        rows = db.session.execute(query).all()
        db.session.commit()
        return jsonify({"items": [row._asdict() for row in rows]})

    return app


def seed(url: str, members: int) -> str:
    """``members`` members with a membership each, and a token; returns the token."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "QUEUE_IN_PROCESS": False})
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        now = utcnow()
        for start in range(0, members, 10_000):
            rows = [
                {
                    "community_id": community.id,
                    "display_name": f"成员{i}",
                    "contact_kind": "email",
                    "contact_value": f"m{i}@example.com",
                    "number": i + 1,
                    "number_label": f"{i + 1:06d}",
                    "created_at": now,
                    "credential_version": 1,
                }
                for i in range(start, min(start + 10_000, members))
            ]
            db.session.execute(sa.insert(Member), rows)
        ids = db.session.scalars(sa.select(Member.id).order_by(Member.id)).all()
        db.session.execute(
            sa.insert(Membership),
            [
                {
                    "member_id": member_id,
                    "tier_id": main.id,
                    "status": MembershipStatus.ACTIVE,
                    "starts_at": now,
                }
                for member_id in ids
            ],
        )
        community.last_member_number = members
        _token, secret = create_token(
            community.id, "bench", ["members:read"], actor="bench", now=now
        )
        db.session.commit()
        for engine in db.engines.values():
            engine.dispose()
    return secret


def _get(args) -> list[tuple[float, int]]:
    base, paths, headers = args
    session = requests.Session()
    results = []
    for path in paths:
        start = time.perf_counter()
        status = session.get(base + path, headers=headers, timeout=30).status_code
        results.append((time.perf_counter() - start, status))
    return results


def load(base: str, paths: list[str], headers: dict[str, str], clients: int) -> dict:
    """GET every path from ``clients`` processes at once; rate and latencies."""
    batches = [(base, paths[i::clients], headers) for i in range(clients)]
    return run_batches(_get, batches, clients)


def run(kind: str, count: int, clients: int) -> list[tuple[str, dict[str, float]]]:
    picker = random.Random(42)  # noqa: S311 (which members to ask for, not a secret)
    numbers = [picker.randint(1, MEMBERS) for _ in range(count)]
    # Pages all over the list: the cursor is the id before the page.
    afters = [picker.randint(0, MEMBERS - PAGE) for _ in range(count)]
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        secret = seed(url, MEMBERS)
        token = {"Authorization": f"Bearer {secret}"}
        rows = []
        with gunicorn("bench.api_lookup:bare_app()", url) as base:
            by_number = [f"/bare/members?number={n}" for n in numbers]
            rows.append(("bare: one SELECT by number", load(base, by_number, {}, clients)))
            bare_list = load(base, [f"/bare/members?after={a}" for a in afters], {}, clients)
        with gunicorn("app:create_app()", url, API_REQUESTS_PER_MINUTE="100000000") as base:
            rows.append(
                (
                    "API: member by number",
                    load(base, [f"/api/v1/members?number={n}" for n in numbers], token, clients),
                )
            )
            rows.append(("bare: one SELECT of a page", bare_list))
            rows.append(
                (
                    "API: members list, a page",
                    load(
                        base,
                        [f"/api/v1/members?after={a}&limit={PAGE}" for a in afters],
                        token,
                        clients,
                    ),
                )
            )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(SETTINGS)
    print(
        f"API lookups at {MEMBERS} members: {args.requests} requests each, {args.clients} "
        f"client processes, gunicorn -c gunicorn.conf.py -w 2, {os.cpu_count()} CPUs"
    )
    print(
        f"{'database':10} {'scenario':30} {'req/s':>9} {'vs bare':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'errors':>6}"
    )
    for kind in ["sqlite", "postgres"] if args.database == "both" else [args.database]:
        rows = run(kind, args.requests, args.clients)
        for (name, r), bare in zip(rows, [rows[0], rows[0], rows[2], rows[2]], strict=True):
            print(
                f"{kind:10} {name:30} {r['rate']:9.1f} {r['rate'] / bare[1]['rate']:8.2f} "
                f"{r['p50']:8.1f} {r['p99']:8.1f} {r['max']:8.1f} {r['errors']:6d}"
            )


if __name__ == "__main__":
    main()
