"""The API under parallel requests over real connections, committed for real: the same
Idempotency-Key sent many times at once makes one change and one answer; a token's rate
limit holds however many requests arrive at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa

from api.tokens import create_token
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from membership.cli import seed_demo_community
from membership.models import ContactKind, Member, Membership, Tier
from tests.conftest import fresh_database
from tests.test_concurrency import _serve

TIMES = 20


def _all_at_once(send, times: int) -> list:
    start = threading.Barrier(times)

    def one(_):
        start.wait()
        return send()

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(one, range(times)))


def _member_and_token(app, scopes: list[str]) -> tuple[int, str]:
    with app.app_context():
        community = seed_demo_community()
        member = Member(
            community_id=community.id,
            display_name="成员",
            contact_kind=ContactKind.EMAIL,
            contact_value="m@example.com",
            created_at=utcnow(),
        )
        db.session.add(member)
        _token, secret = create_token(community.id, "bot", scopes, actor="test", now=utcnow())
        db.session.commit()
        return member.id, secret


@pytest.mark.committing
def test_the_same_idempotency_key_at_once_makes_one_membership(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app:
        member_id, secret = _member_and_token(app, ["members:write"])
        server, base = _serve(app)
        try:
            answers = _all_at_once(
                lambda: requests.post(
                    f"{base}/api/v1/members/{member_id}/memberships",
                    json={"tier": "main", "reason": "speaker"},
                    headers={
                        "Authorization": f"Bearer {secret}",
                        "Idempotency-Key": "grant-once",
                        "Host": "qunmen.test",
                    },
                    timeout=60,
                ),
                TIMES,
            )
        finally:
            server.shutdown()
        assert [a.status_code for a in answers] == [201] * TIMES
        assert len({a.json()["id"] for a in answers}) == 1
        with app.app_context():
            main = db.session.scalar(sa.select(Tier.id).where(Tier.code == "main"))
            held = db.session.scalars(
                sa.select(Membership.id).where(
                    Membership.member_id == member_id, Membership.tier_id == main
                )
            ).all()
            assert len(held) == 1
            granted = db.session.scalars(
                sa.select(AuditEntry.actor).where(AuditEntry.action == "membership.granted")
            ).all()
            assert granted == ["token:bot"]


@pytest.mark.committing
def test_a_tokens_rate_limit_holds_at_once(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server, API_REQUESTS_PER_MINUTE=5) as app:
        _member_id, secret = _member_and_token(app, ["members:read"])
        server, base = _serve(app)
        try:
            codes = _all_at_once(
                lambda: (
                    requests.get(
                        f"{base}/api/v1/members",
                        headers={"Authorization": f"Bearer {secret}", "Host": "qunmen.test"},
                        timeout=60,
                    ).status_code
                ),
                TIMES,
            )
        finally:
            server.shutdown()
        assert sorted(codes) == [200] * 5 + [429] * (TIMES - 5)
