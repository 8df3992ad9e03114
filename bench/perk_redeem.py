"""Perk redemption under contention: members redeem one perk whose stock is a tenth of
them, all at once, against a bare endpoint that takes one of a stock with one conditional
UPDATE, both on 2 gunicorn workers in the same run. Checks that exactly the stock was
redeemed.

Each member's page is opened beforehand in a session of its own: the load is the
redeeming alone.

    bench/run perk_redeem --members 2000
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.bare import bare_stock  # noqa: E402
from bench.order_create import form_post  # noqa: E402
from bench.webhook_ingest import database, gunicorn, load, prepare, rate_main, read  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db  # noqa: E402
from membership.models import Community, Member, Membership, MembershipStatus, Tier  # noqa: E402
from membership.views import MEMBER_SESSION_KEY, member_login  # noqa: E402
from perks.models import Perk, PerkKind  # noqa: E402


def members_redeeming(url: str, members: int) -> tuple[int, list]:
    """``members`` current members and a perk with stock for a tenth of them; each
    member's redemption request. Returns the perk's id and the requests."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "QUEUE_IN_PROCESS": False})
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        now = utcnow()
        perk = Perk(
            community=community,
            name="读书券",
            kind=PerkKind.ITEM,
            stock=members // 10,
            created_at=now,
        )
        people = [
            Member(
                community=community,
                display_name=f"成员{i}",
                contact_kind="wechat",
                contact_value=f"wx_bench{i:06d}",
                number=i + 1,
                number_label=f"{i + 1:04d}",
                created_at=now,
            )
            for i in range(members)
        ]
        db.session.add_all(
            [perk, *people]
            + [
                Membership(member=m, tier=main, status=MembershipStatus.ACTIVE, starts_at=now)
                for m in people
            ]
        )
        db.session.execute(bare_stock.insert().values(id=1, stock=members // 10, taken=0))
        db.session.commit()
        perk_id, member_ids = perk.id, [m.id for m in people]
    requests = []
    for member_id in member_ids:
        client = app.test_client()
        with client.session_transaction() as session:
            session[MEMBER_SESSION_KEY] = member_login(member_id, 1, proven=True, now=utcnow())
        requests.append(form_post(client, "/me", {}))
    return perk_id, requests


def run(kind: str, members: int, clients: int) -> list[tuple[str, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        perk_id, redemptions = members_redeeming(url, members)
        with gunicorn("bench.bare:create_app()", url) as base:
            bare = load(f"{base}/take", redemptions, clients)
        with gunicorn("app:create_app()", url) as base:
            ours = load(f"{base}/me/perks/{perk_id}/redeem", redemptions, clients)
        (redeemed,) = read(url, "SELECT count(*) FROM redemptions")
        (counter,) = read(url, "SELECT redeemed_count FROM perks WHERE id = :id", id=perk_id)
        assert redeemed == counter == members // 10, f"{redeemed} redeemed, {counter} counted"
        return [("bare conditional UPDATE", bare), (f"redeem, stock {members // 10}", ours)]


if __name__ == "__main__":
    rate_main(__doc__, "perk redemption, stock a tenth", "members", 2000, "redeems/s", run)
