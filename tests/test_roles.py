"""Every admin route checks its permission: walked with every role."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from api.tokens import create_token
from core.auth import ROLES, StaffUser, create_staff_user
from core.clock import utcnow
from core.db import db
from core.events import Event, WebhookDelivery, record_event
from core.webhooks_out import create_endpoint
from membership.models import Community, Group, Member, QuestionKind, ScreeningQuestion, Tier
from payments.models import Payment
from perks.models import Announcement, Coupon, Course, Offer, Perk, PerkKind
from tests.helpers import join_and_pay, log_in

#: Admin routes that need no permission: logging in and out, and one's own account.
NO_PERMISSION = {"auth.login", "auth.logout", "auth.change_password", "auth.two_step"}


@pytest.fixture
def ids(app, demo) -> dict[str, int]:
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        question = ScreeningQuestion(community=community, prompt="为什么？", kind=QuestionKind.TEXT)
        db.session.add(question)
        now = utcnow()
        course = Course(
            community=community,
            code="c1",
            title="课",
            price=100,
            currency="CNY",
            access_url="https://example.com/c",
            created_at=now,
        )
        coupon = Coupon(
            community=community,
            code="X1",
            campaign="spring",
            percent_off=10,
            currency="CNY",
            created_at=now,
        )
        perk = Perk(community=community, name="书", kind=PerkKind.ITEM, created_at=now)
        offer = Offer(
            community_id=community.id,
            course=course,
            name="七折",
            percent_off=30,
            created_at=now,
        )
        announcement = Announcement(
            community=community, title="公告", body="…", created_by="test", created_at=now
        )
        db.session.add_all([course, coupon, perk, offer, announcement])
        endpoint = create_endpoint(
            community.id, "https://93.184.215.14/hook", ["perk.redeemed"], actor="t", now=now
        )
        record_event(community.id, "perk.redeemed", {"perk": perk.id}, now=now)
        db.session.commit()
        return {
            "community_id": community.id,
            "tier_id": db.session.scalar(sa.select(Tier.id)),
            "group_id": db.session.scalar(sa.select(Group.id)),
            "question_id": question.id,
            "payment_id": db.session.scalar(sa.select(Payment.id)),
            "member_id": db.session.scalar(sa.select(Member.id)),
            "user_id": 999_999,
            "perk_id": perk.id,
            "coupon_id": coupon.id,
            "course_id": course.id,
            "offer_id": offer.id,
            "announcement_id": announcement.id,
            "campaign": "spring",
            # The API's and the webhooks' pages.
            "token_id": create_token(community.id, "bot", ["members:read"], actor="t", now=now)[
                0
            ].id,
            "endpoint_id": endpoint.id,
            "event_id": db.session.scalar(sa.select(Event.id)),
            "delivery_id": db.session.scalar(sa.select(WebhookDelivery.id)),
        }


def admin_rules(app):
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/admin") and rule.endpoint not in NO_PERMISSION
    ]


def test_every_admin_route_declares_a_permission(app):
    unchecked = [
        rule.endpoint
        for rule in admin_rules(app)
        if not hasattr(app.view_functions[rule.endpoint], "required_permission")
    ]
    assert unchecked == []


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_reaches_exactly_its_routes(app, ids, role):
    email = f"{role}@example.com"
    with app.app_context():
        create_staff_user(email, role, "a long password", actor="test", role=role)
        db.session.commit()
    client = app.test_client()
    assert log_in(client, email=email, password="a long password").status_code == 302
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/").text)
    csrf = token.group(1) if token else ""
    permissions = ROLES[role][1]
    for rule in admin_rules(app):
        needed = app.view_functions[rule.endpoint].required_permission
        url = rule.build({k: v for k, v in ids.items() if k in rule.arguments})[1]
        if "GET" in rule.methods:
            response = client.get(url)
        else:
            response = client.post(url, data={"csrf_token": csrf})
        response.close()  # a streamed export keeps its context until closed, as servers do
        if needed in permissions:
            assert response.status_code != 403, (role, rule.rule)
        else:
            assert response.status_code == 403, (role, rule.rule, response.status_code)


def test_the_owner_assigns_roles_and_disables_staff(app, client, admin):
    log_in(client)
    page = client.get("/admin/staff").text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    added = client.post(
        "/admin/staff",
        data={
            "csrf_token": token,
            "email": "money@example.com",
            "name": "财务小李",
            "role": "finance",
            "password": "finance password",
        },
    )
    assert added.status_code == 302
    with app.app_context():
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.role == "finance"))
        user_id = user.id
    client.post(
        f"/admin/staff/{user_id}", data={"csrf_token": token, "action": "role", "role": "moderator"}
    )
    client.post(
        f"/admin/staff/{user_id}",
        data={"csrf_token": token, "action": "disable", "role": "moderator"},
    )
    with app.app_context():
        user = db.session.get(StaffUser, user_id)
        assert (user.role, user.active) == ("moderator", False)
    other = app.test_client()
    log_in(other, email="money@example.com", password="finance password")
    assert other.get("/admin/").status_code == 302  # disabled: not logged in
    own = client.post(
        f"/admin/staff/{admin.id}", data={"csrf_token": token, "action": "disable", "role": "owner"}
    )
    assert "不能修改自己" in client.get(own.location).text
    audit = client.get("/admin/audit", query_string={"target_type": "staff_users"}).text
    assert "staff.role_changed" in audit
    assert "staff.disabled" in audit
    assert "finance password" not in audit


def test_pages_carry_security_headers(client, demo):
    response = client.get("/join/demo")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
