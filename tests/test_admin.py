"""Admin: login, CSRF, communities, tiers and groups, lists, and the CLI commands."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from core import audit
from core.audit import AuditEntry
from core.auth import StaffUser
from core.clock import utcnow
from core.db import db
from membership.cli import _qr_png
from membership.models import Community, Group, Tier, TierKind
from tests.helpers import ADMIN_PASSWORD, count, join_and_pay, log_in, statements, submit_form

ADMIN_PAGES = [
    "/admin/",
    "/admin/communities/new",
    "/admin/payments/orders",
    "/admin/payments/payments",
    "/admin/payments/inbox",
]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_admin_pages_need_a_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.location.startswith("/admin/login?next=")


def test_wrong_password_is_refused(client, admin):
    response = log_in(client, password="nope-nope")
    assert response.status_code == 200
    assert "邮箱或密码不正确" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_disabled_admin_cannot_log_in(app, client, admin):
    with app.app_context():
        db.session.get(StaffUser, admin.id).active = False
        db.session.commit()
    log_in(client)
    assert client.get("/admin/").status_code == 302


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "https://evil.example/"])
def test_login_never_redirects_off_site(client, admin, target):
    response = log_in(client, query_string={"next": target})
    assert response.status_code == 302
    assert response.location == "/admin/"


def test_passwords_are_stored_hashed(app, admin):
    with app.app_context():
        stored = db.session.get(StaffUser, admin.id).password_hash
    assert ADMIN_PASSWORD not in stored
    assert stored.startswith(("scrypt:", "pbkdf2:"))


def test_admin_post_without_csrf_is_refused(app, logged_in):
    response = logged_in.post("/admin/communities/new", data={"name": "x", "slug": "xx"})
    assert response.status_code == 400
    with app.app_context():
        assert count(Community) == 0


def test_logout_needs_a_post_with_csrf(logged_in):
    assert logged_in.get("/admin/logout").status_code == 405
    assert logged_in.post("/admin/logout").status_code == 400
    assert logged_in.get("/admin/").status_code == 200


def _create_community(client, **overrides):
    url = "/admin/communities/new"
    data = {
        "name": "周末跑团",
        "slug": "weekend-run",
        "pitch": "一起跑步",
        "rules": "守时",
        "currency": "CNY",
        "time_zone": "Asia/Shanghai",
        "member_number_pattern": "RUN-###",
        "staff_number_pattern": "T-##",
        "pay_link_days": "5",
        "reminder_days": "3",
        **overrides,
    }
    return submit_form(client, url, data)


def test_create_community_tier_and_group_then_join(app, logged_in):
    response = _create_community(logged_in)
    assert response.status_code == 302
    with app.app_context():
        community = db.session.scalar(sa.select(Community).where(Community.slug == "weekend-run"))
        community_id = community.id
        assert (community.pay_link_days, community.reminder_days) == (5, 3)

    png = _qr_png("weekend run group")
    url = f"/admin/communities/{community_id}/groups/new"
    response = submit_form(
        logged_in,
        url,
        {
            "name": "跑团一群",
            "platform": "wechat",
            "capacity": "200",
            "qr_image": (io.BytesIO(png), "qr.png"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    with app.app_context():
        group = db.session.scalar(sa.select(Group).where(Group.name == "跑团一群"))
        assert (group.qr_image, group.qr_mime) == (png, "image/png")
        group_id = group.id

    url = f"/admin/communities/{community_id}/tiers/new"
    response = submit_form(
        logged_in,
        url,
        {
            "code": "season",
            "name": "季度跑友",
            "includes": "每周约跑\n装备折扣",
            "kind": "paid",
            "price": "19.90",
            "duration_days": "90",
            "audience": "everyone",
            "active": "y",
            "sort_order": "0",
            "groups": [str(group_id)],
        },
    )
    assert response.status_code == 302
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "season"))
        assert (tier.price, tier.currency, tier.kind) == (1990, "CNY", TierKind.PAID)
        assert tier.duration_days == 90
        actions = set(db.session.scalars(sa.select(AuditEntry.action)))
        assert {"community.saved", "group.saved", "tier.saved"} <= actions

    assert "¥19.90" in logged_in.get("/join/weekend-run").get_data(as_text=True)
    prospect = app.test_client()
    status_path = join_and_pay(prospect, "season", slug="weekend-run")
    assert 'id="member-number">RUN-001<' in prospect.get(status_path).get_data(as_text=True)

    members = logged_in.get(f"/admin/communities/{community_id}/members").get_data(as_text=True)
    assert "RUN-001" in members
    assert "读书人小王" in members
    orders = logged_in.get("/admin/payments/orders").get_data(as_text=True)
    assert "¥19.90" in orders
    assert "paid" in orders
    inbox = logged_in.get("/admin/payments/inbox").get_data(as_text=True)
    assert "processed" in inbox


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"slug": "Bad Slug"}, "小写字母"),
        ({"time_zone": "Mars/Olympus"}, "未知时区"),
        ({"member_number_pattern": "#-#"}, "一段 #"),
        ({"name": ""}, "必填"),
    ],
)
def test_bad_community_form_is_refused(app, logged_in, overrides, message):
    response = _create_community(logged_in, **overrides)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert count(Community) == 0


def test_community_slug_must_be_unique(app, logged_in, demo):
    response = _create_community(logged_in, slug="demo")
    assert "链接名已被使用" in response.get_data(as_text=True)
    with app.app_context():
        assert count(Community) == 1


def _tier_form(client, community_id, **overrides):
    url = f"/admin/communities/{community_id}/tiers/new"
    data = {
        "code": "vip",
        "name": "VIP",
        "kind": "paid",
        "price": "199",
        "audience": "everyone",
        "sort_order": "5",
        **overrides,
    }
    return submit_form(client, url, data)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"price": "19.999"}, "金额格式不正确，例如 99.00"),
        ({"price": "-5"}, "金额格式不正确"),
        ({"price": "1e3"}, "金额格式不正确"),
        ({"price": "0"}, "免费档价格为0"),
        ({"kind": "free", "price": "9"}, "免费档价格为0"),
        ({"code": "main"}, "代号已被使用"),
        ({"duration_days": "0"}, "必须介于 1 到 36500"),  # WTForms' own message, in Chinese
    ],
)
def test_bad_tier_form_is_refused(app, logged_in, demo, overrides, message):
    response = _tier_form(logged_in, demo.id, **overrides)
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert count(Tier) == 3


def test_group_qr_must_be_an_image(app, logged_in, demo):
    url = f"/admin/communities/{demo.id}/groups/new"
    response = submit_form(
        logged_in,
        url,
        {
            "name": "假图片",
            "platform": "wechat",
            "capacity": "100",
            "qr_image": (io.BytesIO(b"<svg onload=alert(1)>"), "qr.png"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "不是有效的图片" in response.get_data(as_text=True)
    with app.app_context():
        assert count(Group) == 2


def test_group_capacity_is_capped_by_the_platform(app, logged_in, demo):
    url = f"/admin/communities/{demo.id}/groups/new"
    response = submit_form(
        logged_in,
        url,
        {
            "name": "超大群",
            "platform": "wechat",
            "capacity": "501",
        },
    )
    assert "最多 500 人" in response.get_data(as_text=True)
    with app.app_context():
        assert count(Group) == 2


def test_create_admin_command(app, runner):
    result = runner.invoke(
        args=["create-admin", "--email", "Finance@Example.com", "--name", "财务"],
        input="long enough pw\nlong enough pw\n",
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(sa.select(StaffUser))
        assert user.email == "finance@example.com"
        assert user.check_password("long enough pw")
    again = runner.invoke(
        args=["create-admin", "--email", "finance@example.com", "--name", "x"],
        input="long enough pw\nlong enough pw\n",
    )
    assert again.exit_code != 0
    assert "exists already" in again.output


def test_create_admin_refuses_short_passwords(app, runner):
    result = runner.invoke(
        args=["create-admin", "--email", "a@example.com", "--name", "a"], input="short\nshort\n"
    )
    assert result.exit_code != 0
    with app.app_context():
        assert count(StaffUser) == 0


def test_seed_demo_is_idempotent(app, runner):
    for _ in range(2):
        result = runner.invoke(args=["seed-demo"])
        assert result.exit_code == 0, result.output
        assert "/join/demo" in result.output
    with app.app_context():
        assert count(Community) == 1
        assert count(Tier) == 3
        assert count(Group) == 2
        prices = dict(db.session.execute(sa.select(Tier.code, Tier.price)).all())
    assert prices == {"lobby": 0, "main": 9900, "reentry": 900}


def test_inside_ids_at_commit_an_entry_about_a_new_row_waits_for_the_commit_flush(app, demo):
    """The money path records entries about rows it makes (a member, an invitation) without
    a flush each: the commit's one flush gives the entry its row's id and community."""
    flushes = []

    def flushed(_session, _context):
        flushes.append(1)

    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.max(AuditEntry.id))) or 0
        sa.event.listen(db.session(), "after_flush", flushed)
        try:
            group = Group(
                community_id=demo.id,
                name="新群",
                platform="wechat",
                capacity=500,
                created_at=utcnow(),
            )
            db.session.add(group)
            with audit.ids_at_commit():
                audit.record("group.created", group, actor="cli")
            assert group.id is None and flushes == []  # nothing flushed for the entry
            other = Group(
                community_id=demo.id,
                name="另群",
                platform="wechat",
                capacity=500,
                created_at=utcnow(),
            )
            db.session.add(other)
            audit.record("group.created", other, actor="cli")  # outside it: flushed at once
            assert other.id is not None and len(flushes) == 1
            db.session.commit()
        finally:
            sa.event.remove(db.session(), "after_flush", flushed)
        entries = db.session.execute(
            sa.select(AuditEntry.target_id, AuditEntry.community_id)
            .where(AuditEntry.id > before)
            .order_by(AuditEntry.id)
        ).all()
        assert entries == [(group.id, demo.id), (other.id, demo.id)]


def test_audit_entries_are_written_together_when_the_transaction_commits(app, demo):
    with app.app_context(), statements(app) as seen:

        def inserts() -> list[str]:
            return [s for s in seen if s.startswith("INSERT INTO audit_entries")]

        before = db.session.scalar(sa.select(sa.func.max(AuditEntry.id))) or 0
        community = db.session.get(Community, demo.id)
        audit.record("community.checked", community, actor="cli", data={"count": 1})
        audit.record("community.checked", community, actor="cli", data={"count": 2})
        group = Group(
            community_id=demo.id,
            name="新群",
            platform="wechat",
            capacity=500,
            created_at=utcnow(),
        )
        db.session.add(group)
        audit.record("group.created", group, actor="cli")  # a new row: flushed for its id
        assert inserts() == []
        db.session.commit()
        assert len(inserts()) == 1  # one statement for the three entries

        audit.record("community.checked", community, actor="cli", data={"count": 3})
        db.session.rollback()  # the change it described is undone: so is the entry
        db.session.commit()
        assert len(inserts()) == 1
        entries = db.session.execute(
            sa.select(AuditEntry.action, AuditEntry.target_id, AuditEntry.data)
            .where(AuditEntry.id > before)
            .order_by(AuditEntry.id)
        ).all()
        assert entries == [
            ("community.checked", demo.id, {"count": 1}),
            ("community.checked", demo.id, {"count": 2}),
            ("group.created", group.id, {}),
        ]
