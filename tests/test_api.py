"""The public API: tokens and their scopes, one community's data only, writes through the
admin's services audited with the token's name, Idempotency-Key, cursor pages, the event
feed, rate limits, and errors as problem+json."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from api.models import SCOPES, ApiToken, IdempotentAnswer
from api.tokens import create_token, token_hash
from api.views import MemberPage
from core.audit import AuditEntry
from core.catalogs import HAN
from core.clock import utcnow
from core.db import db
from core.events import Event
from core.limits import AttemptCounter
from membership.models import Community, Member, Membership, MembershipStatus
from tests.helpers import add_coupon, join_and_pay, log_in

ALL_SCOPES = [
    "members:read",
    "members:write",
    "orders:read",
    "perks:read",
    "perks:write",
    "events:read",
]


def make_token(app, scopes=ALL_SCOPES, *, slug="demo", name="bot") -> str:
    with app.app_context():
        community = db.session.scalar(sa.select(Community).where(Community.slug == slug))
        _token, secret = create_token(community.id, name, list(scopes), actor="test", now=utcnow())
        db.session.commit()
        return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def other_community(app) -> None:
    """A second community with one paid member of its own."""
    with app.app_context():
        demo = db.session.scalar(sa.select(Community).where(Community.slug == "demo"))
        other = Community(
            name="别的社群", slug="other", currency="CNY", created_at=utcnow(), last_member_number=0
        )
        db.session.add(other)
        db.session.flush()
        member = Member(
            community_id=other.id,
            display_name="外人",
            contact_kind="email",
            contact_value="stranger@example.com",
            number=7,
            number_label="0007",
            created_at=utcnow(),
        )
        db.session.add(member)
        db.session.commit()
        assert demo.id != other.id


def first_membership(app) -> tuple[int, int]:
    with app.app_context():
        membership = db.session.scalar(sa.select(Membership).order_by(Membership.id))
        return membership.member_id, membership.id


def test_a_token_without_members_write_cannot_end_a_membership(app, demo, client):
    join_and_pay(app.test_client(), "main")
    _member_id, membership_id = first_membership(app)
    reader = make_token(app, ["members:read"])
    answer = client.post(
        f"/api/v1/memberships/{membership_id}/end", json={"reason": "x"}, headers=bearer(reader)
    )
    assert answer.status_code == 403
    assert answer.mimetype == "application/problem+json"
    assert "members:write" in answer.json["detail"]
    with app.app_context():
        assert db.session.get(Membership, membership_id).status is MembershipStatus.ACTIVE
        assert (
            db.session.scalar(
                sa.select(sa.func.count(Event.id)).where(Event.type == "membership.ended")
            )
            == 0
        )


def test_a_writer_ends_a_membership_audited_with_the_tokens_name(app, demo, client):
    join_and_pay(app.test_client(), "main")
    _member_id, membership_id = first_membership(app)
    writer = make_token(app, ["members:write"], name="crm-sync")
    answer = client.post(
        f"/api/v1/memberships/{membership_id}/end",
        json={"reason": "left the course"},
        headers=bearer(writer),
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "ended"
    again = client.post(
        f"/api/v1/memberships/{membership_id}/end", json={"reason": "x"}, headers=bearer(writer)
    )
    assert again.status_code == 409
    with app.app_context():
        entry = db.session.scalar(
            sa.select(AuditEntry).where(AuditEntry.action == "membership.ended")
        )
        assert (entry.actor, entry.data["reason"]) == ("token:crm-sync", "left the course")
        event = db.session.scalar(sa.select(Event).where(Event.type == "membership.ended"))
        assert event.data["membership"] == membership_id


def test_a_revoked_token_stops_working_at_once(app, demo, client, admin):
    secret = make_token(app, ["members:read"])
    assert client.get("/api/v1/members", headers=bearer(secret)).status_code == 200
    staff = app.test_client()
    log_in(staff)
    with app.app_context():
        token_id = db.session.scalar(sa.select(ApiToken.id))
        community_id = db.session.scalar(sa.select(Community.id))
    page = staff.get(f"/admin/communities/{community_id}/api").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert (
        staff.post(f"/admin/api-tokens/{token_id}/revoke", data={"csrf_token": csrf}).status_code
        == 302
    )
    answer = client.get("/api/v1/members", headers=bearer(secret))
    assert answer.status_code == 401
    assert answer.mimetype == "application/problem+json"
    assert answer.json["status"] == 401


def test_a_token_of_one_community_sees_nothing_of_another(app, demo, client):
    join_and_pay(app.test_client(), "main")
    other_community(app)
    secret = make_token(app)
    with app.app_context():
        stranger = db.session.scalar(sa.select(Member).where(Member.display_name == "外人"))
        ours = db.session.scalar(sa.select(Member).where(Member.display_name != "外人"))
        db.session.expunge_all()
    listed = client.get("/api/v1/members", headers=bearer(secret)).json
    assert [m["id"] for m in listed["items"]] == [ours.id]
    assert client.get(f"/api/v1/members/{stranger.id}", headers=bearer(secret)).status_code == 404
    by_number = client.get("/api/v1/members", query_string={"number": "7"}, headers=bearer(secret))
    assert by_number.json["items"] == []
    grant = client.post(
        f"/api/v1/members/{stranger.id}/memberships",
        json={"tier": "main", "reason": "x"},
        headers=bearer(secret),
    )
    assert grant.status_code == 404
    with app.app_context():
        assert (
            db.session.scalar(
                sa.select(sa.func.count(Membership.id)).where(Membership.member_id == stranger.id)
            )
            == 0
        )


def test_members_are_found_by_number_contact_and_openid(app, demo, client):
    join_and_pay(app.test_client(), "main", contact_kind="email", contact_value="a@example.com")
    join_and_pay(app.test_client(), "main", contact_kind="email", contact_value="b@example.com")
    with app.app_context():
        second = db.session.scalar(sa.select(Member).where(Member.contact_value == "b@example.com"))
        second.wechat_openid = "openid-b"
        db.session.commit()
        db.session.refresh(second)
        db.session.expunge_all()
    secret = make_token(app, ["members:read"])

    def found(**query):
        answer = client.get("/api/v1/members", query_string=query, headers=bearer(secret))
        assert answer.status_code == 200, answer.json
        return [m["id"] for m in answer.json["items"]]

    assert found(number=str(second.number)) == [second.id]
    assert found(number=f"{second.number:04d}") == [second.id]
    assert found(contact="B@example.com") == [second.id]
    assert found(openid="openid-b") == [second.id]
    assert found(openid="nobody") == []
    assert len(found(tier="main", current="true")) == 2
    member = client.get(f"/api/v1/members/{second.id}", headers=bearer(secret)).json
    assert member["number_label"] == second.number_label
    assert member["memberships"][0]["tier"] == "main"
    assert "contact_value" not in member and "b@example.com" not in str(member)


def test_the_members_page_is_what_its_schema_dumps_of_the_members(app, demo, client):
    """The members list writes its page from columns (see ``api.views._member_page``): it
    must say what :class:`~api.views.MemberPage` dumps of the members themselves, with
    several memberships, an ended one, one with no end, and a staff number."""
    for _ in range(3):
        join_and_pay(app.test_client(), "main")
    with app.app_context():
        first = db.session.scalar(sa.select(Membership).order_by(Membership.id))
        first.status = MembershipStatus.ENDED
        first.ends_at = None
        member = first.member
        member.staff_number, member.staff_number_label = 1, "S01"
        db.session.add(
            Membership(
                member=member,
                tier=first.tier,
                status=MembershipStatus.ACTIVE,
                starts_at=utcnow(),
                ends_at=utcnow() + timedelta(days=30),
            )
        )
        db.session.commit()
    secret = make_token(app, ["members:read"])
    answer = client.get("/api/v1/members", query_string={"limit": 2}, headers=bearer(secret))
    assert answer.status_code == 200
    with app.app_context():
        members = db.session.scalars(sa.select(Member).order_by(Member.id).limit(3)).all()
        expected = MemberPage().dump({"items": members[:2], "next": members[1].id})
    assert answer.json == expected
    assert [len(m["memberships"]) for m in answer.json["items"]] == [2, 1]


def test_pages_follow_the_cursor(app, demo, client):
    for _ in range(3):
        join_and_pay(app.test_client(), "main")
    secret = make_token(app, ["members:read"])
    seen, after = [], 0
    while after is not None:
        page = client.get(
            "/api/v1/members", query_string={"after": after, "limit": 2}, headers=bearer(secret)
        ).json
        seen += [m["id"] for m in page["items"]]
        after = page["next"]
    assert len(seen) == 3 and seen == sorted(seen)


def test_the_event_feed_reads_after_a_cursor(app, demo, client):
    join_and_pay(app.test_client(), "main")
    secret = make_token(app, ["events:read"])
    feed = client.get("/api/v1/events", headers=bearer(secret)).json
    types = [e["type"] for e in feed["items"]]
    assert "payment.confirmed" in types and "member.admitted" in types
    last = feed["items"][-1]["cursor"]
    join_and_pay(app.test_client(), "main")
    newer = client.get("/api/v1/events", query_string={"after": last}, headers=bearer(secret)).json
    assert newer["items"] and all(e["cursor"] > last for e in newer["items"])


def test_an_idempotency_key_gives_the_same_answer_and_one_change(app, demo, client):
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        member_id = db.session.scalar(sa.select(Member.id))
    secret = make_token(app, ["members:write"])
    headers = {**bearer(secret), "Idempotency-Key": "grant-1"}
    body = {"tier": "reentry", "reason": "speaker"}
    first = client.post(f"/api/v1/members/{member_id}/memberships", json=body, headers=headers)
    second = client.post(f"/api/v1/members/{member_id}/memberships", json=body, headers=headers)
    assert first.status_code == second.status_code == 201, first.json
    assert first.json == second.json
    assert second.headers["Idempotent-Replayed"] == "true"
    other = client.post(
        f"/api/v1/members/{member_id}/memberships", json={**body, "reason": "x"}, headers=headers
    )
    assert other.status_code == 422
    assert other.mimetype == "application/problem+json"
    without = client.post(
        f"/api/v1/members/{member_id}/memberships", json=body, headers=bearer(secret)
    )
    assert without.status_code == 409  # held already: the key made the repeat harmless
    with app.app_context():
        assert (
            db.session.scalar(
                sa.select(sa.func.count(Membership.id)).where(Membership.member_id == member_id)
            )
            == 2
        )
        assert db.session.scalar(sa.select(sa.func.count()).select_from(IdempotentAnswer)) == 1


def test_malformed_requests_get_a_problem_and_change_nothing(app, demo, client):
    join_and_pay(app.test_client(), "main")
    _member_id, membership_id = first_membership(app)
    secret = make_token(app)
    for body in ({}, {"reason": ""}, {"reason": 5}, {"reason": "x" * 201}):
        answer = client.post(
            f"/api/v1/memberships/{membership_id}/end", json=body, headers=bearer(secret)
        )
        assert answer.status_code == 422, body
        assert answer.mimetype == "application/problem+json"
        assert answer.json["errors"]
    bad = client.get("/api/v1/members", query_string={"limit": "1000"}, headers=bearer(secret))
    assert bad.status_code == 422
    for query in ({"openid": "a\x00b"}, {"contact": "\x00@example.com"}, {"tier": "\x00"}):
        nul = client.get("/api/v1/members", query_string=query, headers=bearer(secret))
        assert nul.status_code == 422, query  # PostgreSQL's text cannot hold it: not a 500
        assert nul.mimetype == "application/problem+json"
    typo = client.get("/api/v1/members", query_string={"numbr": "1"}, headers=bearer(secret))
    assert typo.status_code == 422  # not everyone
    for path in ("/api/v1/members/abc", "/api/v1/members/a%0Ab", "/api/v1/members/0/invitations"):
        missing = client.get(path, headers=bearer(secret))
        assert (missing.status_code, missing.mimetype) == (404, "application/problem+json"), path
    for header in ("", "Bearer", "Bearer qm_forged", "Basic abc"):
        answer = client.get("/api/v1/members", headers={"Authorization": header})
        assert answer.status_code == 401
    with app.app_context():
        assert db.session.get(Membership, membership_id).status is MembershipStatus.ACTIVE


def test_each_token_is_rate_limited(app, demo, client, monkeypatch):
    monkeypatch.setitem(app.config, "API_REQUESTS_PER_MINUTE", 3)
    secret, other = make_token(app, ["members:read"]), make_token(app, ["members:read"], name="b")
    codes = [client.get("/api/v1/members", headers=bearer(secret)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert client.get("/api/v1/members", headers=bearer(other)).status_code == 200


def test_a_busy_token_claims_its_tries_a_block_at_a_time(app, demo, client, monkeypatch):
    """At 180 a minute a process claims 3 tries at once (one write for three requests),
    and the blocks still add up to the limit: the 181st request is refused."""
    monkeypatch.setitem(app.config, "API_REQUESTS_PER_MINUTE", 180)
    secret = make_token(app, ["members:read"])
    with app.app_context():
        token_id = db.session.scalar(sa.select(ApiToken.id).where(ApiToken.name == "bot"))

    def blocks_claimed() -> int:
        with app.app_context():
            key = f"api:3:{token_id}"
            return db.session.scalar(
                sa.select(AttemptCounter.count).where(AttemptCounter.key == key)
            )

    codes = [client.get("/api/v1/members", headers=bearer(secret)).status_code for _ in range(3)]
    assert (codes, blocks_claimed()) == ([200] * 3, 1)
    codes += [client.get("/api/v1/members", headers=bearer(secret)).status_code for _ in range(178)]
    assert codes == [200] * 180 + [429]
    assert blocks_claimed() == 61


def test_the_owner_makes_a_token_shown_once_and_kept_hashed(app, demo, admin):
    staff = app.test_client()
    log_in(staff)
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/communities/{community_id}/api"
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', staff.get(url).text).group(1)
    page = staff.post(
        url, data={"csrf_token": csrf, "name": "机器人", "scopes": ["members:read", "orders:read"]}
    ).text
    secret = re.search(r'id="new-token">(qm_[^<]+)<', page).group(1)
    assert secret not in staff.get(url).text  # shown once
    with app.app_context():
        token = db.session.scalar(sa.select(ApiToken))
        assert token.hash == token_hash(secret) and secret not in (token.prefix + token.hash)
        assert token.scopes == ["members:read", "orders:read"]
    bad = staff.post(url, data={"csrf_token": csrf, "name": "x", "scopes": ["root"]})
    assert "未知的权限：root" in bad.text
    none = staff.post(url, data={"csrf_token": csrf, "name": "x"})
    assert "请至少勾选一项权限" in none.text and "未知的权限" not in none.text
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(ApiToken.id))) == 1


@pytest.mark.parametrize("role", ["admin", "finance", "moderator"])
def test_only_the_owner_manages_tokens(app, demo, role):
    from core.auth import create_staff_user

    with app.app_context():
        create_staff_user(f"{role}@example.com", role, "a long password", actor="t", role=role)
        community_id = db.session.scalar(sa.select(Community.id))
        db.session.commit()
    staff = app.test_client()
    log_in(staff, email=f"{role}@example.com", password="a long password")
    assert staff.get(f"/admin/communities/{community_id}/api").status_code == 403
    assert staff.get(f"/admin/communities/{community_id}/webhooks").status_code == 403


def test_an_idempotency_key_is_kept_a_day(app, demo, client):
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        member_id = db.session.scalar(sa.select(Member.id))
    secret = make_token(app, ["perks:write"])
    headers = {**bearer(secret), "Idempotency-Key": "coupon-1"}
    add_coupon(app, "VIP20")
    first = client.post(
        f"/api/v1/members/{member_id}/coupons", json={"code": "VIP20"}, headers=headers
    )
    assert first.status_code == 201 and first.json["issued"] is True
    with app.app_context():
        db.session.execute(
            sa.update(IdempotentAnswer).values(created_at=utcnow() - timedelta(hours=25))
        )
        db.session.commit()
    later = client.post(
        f"/api/v1/members/{member_id}/coupons", json={"code": "VIP20"}, headers=headers
    )
    assert later.status_code == 201
    assert later.json["issued"] is False  # run again: the member holds it already
    assert "Idempotent-Replayed" not in later.headers
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(IdempotentAnswer)) == 1


@pytest.mark.parametrize(
    ("accept_language", "title", "detail"),
    [
        (None, "Not found", "No such member"),  # says nothing: English, for developers
        ("fr-FR, de;q=0.8", "Not found", "No such member"),  # nothing we have: English
        ("*", "Not found", "No such member"),
        ("zh-CN,zh;q=0.9,en;q=0.5", "未找到", "没有该成员"),
        ("en-US,zh-CN;q=0.5", "Not found", "No such member"),
    ],
)
def test_a_problem_speaks_the_language_the_client_accepts(
    app, demo, client, accept_language, title, detail
):
    headers = bearer(make_token(app))
    if accept_language:
        headers["Accept-Language"] = accept_language
    client.get("/lang/zh_CN")  # a browser's choice of its pages does not decide the API's
    answer = client.get("/api/v1/members/999999", headers=headers)
    assert answer.status_code == 404
    assert (answer.json["title"], answer.json["detail"]) == (title, detail)
    unknown = client.get("/api/v1/nothing-here", headers=headers)
    assert unknown.json["title"] == title


def test_the_openapi_document_is_english_whatever_the_client_accepts(app, client):
    english = client.get("/api/v1/openapi.json").get_data(as_text=True)
    chinese = client.get("/api/v1/openapi.json", headers={"Accept-Language": "zh-CN"})
    assert chinese.get_data(as_text=True) == english
    assert not HAN.search(english)


def test_scope_descriptions_are_labels_in_the_readers_language(app):
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert str(SCOPES["members:read"]) == "Read members, memberships, invitations"
    with app.test_request_context(headers={"Accept-Language": "zh-CN"}):
        assert str(SCOPES["members:read"]) == "查看成员、资格、邀请"
