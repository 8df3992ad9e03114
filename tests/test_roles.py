"""Every admin route checks its permission and the community of what it shows or changes:
walked with every role, in the community the role is held in and against another one's
objects; the team page; the API's tokens per community."""

from __future__ import annotations

import re

import flask_migrate
import pytest
import sqlalchemy as sa

from api.models import SCOPES
from api.tokens import create_token
from core.audit import AuditEntry
from core.auth import ROLES, StaffUser, create_staff_user, set_role
from core.clock import utcnow
from core.db import db
from core.events import Event, WebhookDelivery, record_event
from core.outbox import MessageKind, OutboxMessage, OutboxStatus
from core.webhooks_out import create_endpoint
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Group,
    Member,
    Membership,
    PlatformTask,
    QuestionKind,
    RemovalTask,
    ScreeningQuestion,
    TaskAction,
    TaskStatus,
    Tier,
)
from payments.models import FlagKind, OrderFlag, Payment
from perks.models import Announcement, Coupon, Course, Offer, Perk, PerkKind
from tests.conftest import fresh_database
from tests.helpers import ADMIN_PASSWORD as PASSWORD
from tests.helpers import join_and_pay, log_in
from tests.test_payment_accounts import give_wechatpay

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
        token, _secret = create_token(community.id, "bot", ["members:read"], actor="t", now=now)
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
            "token_id": token.id,
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


def community_a(app) -> int:
    """Community A, besides the demo community (B): a community of its own, empty."""
    with app.app_context():
        community = Community(name="甲社群 Alpha", slug="alpha", created_at=utcnow())
        db.session.add(community)
        db.session.commit()
        return community.id


def staff_of(app, community_id: int, role: str, email: str | None = None) -> str:
    """An account holding ``role`` in the community only; its e-mail."""
    email = email or f"{role}-{community_id}@example.com"
    with app.app_context():
        create_staff_user(email, role, PASSWORD, actor="test", role=role, community_id=community_id)
        db.session.commit()
    return email


def logged_in_as(app, email: str):
    client = app.test_client()
    assert log_in(client, email=email, password=PASSWORD).status_code == 302
    return client


def page_csrf(client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/").text)
    return token.group(1) if token else ""


def methods(rule) -> list[str]:
    """What a walk sends to a route: GET and POST, those it answers."""
    return sorted(rule.methods & {"GET", "POST"})


def visit(client, rule, method: str, ids: dict, csrf: str, form: dict | None = None):
    """GET (with ``?community=`` naming B, which the picker must ignore) or POST the
    route with ``ids``; the status and the whole body, read before the response closes."""
    url = rule.build({k: v for k, v in ids.items() if k in rule.arguments})[1]
    if method == "GET":
        response = client.get(url, query_string={"community": ids["community_id"]})
    else:
        response = client.post(url, data={"csrf_token": csrf, **(form or {})})
    body = response.get_data(as_text=True)
    response.close()  # a streamed export keeps its context until closed, as servers do
    return response.status_code, body


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_reaches_exactly_its_routes(app, ids, role):
    """In its own community, a role reaches the routes its permissions name and no other;
    creating communities is the install owners' alone."""
    client = logged_in_as(app, staff_of(app, ids["community_id"], role))
    csrf = page_csrf(client)
    permissions = ROLES[role][1]
    for rule in admin_rules(app):
        needed = app.view_functions[rule.endpoint].required_permission
        for method in methods(rule):
            status, _body = visit(client, rule, method, ids, csrf)
            if needed in permissions:
                assert status != 403, (role, method, rule.rule)
            else:
                assert status == 403, (role, method, rule.rule, status)


def test_an_install_owner_reaches_every_route(app, ids, admin):
    client = logged_in_as_admin(app)
    csrf = page_csrf(client)
    for rule in admin_rules(app):
        method = "GET" if "GET" in rule.methods else "POST"
        status, _body = visit(client, rule, method, {**ids, "user_id": admin.id}, csrf)
        assert status not in (403, 404), (rule.rule, status)


def logged_in_as_admin(app):
    client = app.test_client()
    assert log_in(client).status_code == 302
    return client


#: Written into the names of community B's things: no page of A's staff may show it.
MARK = "zqbravo"


@pytest.fixture
def community_b(app, ids) -> dict[str, int]:
    """The demo community (B) with one of everything, its names marked with :data:`MARK`,
    and a few rows more the lists show: a pending application, an order flag, a removal
    task, a failed platform call, a failed message. Their ids, for the routes' arguments
    and for the forms that name a row."""
    with app.app_context():
        community = db.session.get(Community, ids["community_id"])
        community.name = f"乙社群 {MARK}"
        for tier in community.tiers:
            tier.name = f"{tier.name} {MARK}"
        for group in community.groups:
            group.name = f"{group.name} {MARK}"
        for model, column in ((Perk, "name"), (Offer, "name"), (Course, "title")):
            for row in db.session.scalars(sa.select(model)):
                setattr(row, column, f"{MARK} {getattr(row, column)}")
        for row in db.session.scalars(sa.select(Announcement)):
            row.title = f"{MARK} {row.title}"
        member = db.session.get(Member, ids["member_id"])
        member.display_name = f"{MARK}成员"
        invitation = member.invitations[0]
        payment = db.session.get(Payment, ids["payment_id"])
        now = utcnow()
        flag = OrderFlag(
            order_id=payment.order_id,
            payment_id=payment.id,
            kind=FlagKind.PAID_TWICE,
            detail=MARK,
            created_at=now,
        )
        task = PlatformTask(
            invitation_id=invitation.id,
            action=TaskAction.GRANT,
            status=TaskStatus.FAILED,
            attempts=5,
            next_attempt_at=now,
            last_error=MARK,
            created_at=now,
        )
        removal = RemovalTask(
            invitation_id=invitation.id, group_id=invitation.group_id, created_at=now
        )
        message = OutboxMessage(
            kind=MessageKind.NOTICE,
            routes=[["email", f"{MARK}@example.com"]],
            subject=f"{MARK} subject",
            body=MARK,
            member_id=member.id,
            status=OutboxStatus.FAILED,
            attempts=5,
            next_attempt_at=now,
            last_error=MARK,
            created_at=now,
        )
        application = Application(
            public_id=f"{MARK}-application",
            submission_key=f"{MARK}-submission",
            community_id=community.id,
            tier_id=ids["tier_id"],
            display_name=f"{MARK}申请人",
            contact_kind=ContactKind.EMAIL,
            contact_value=f"{MARK}@example.com",
            rules_accepted_at=now,
            status=ApplicationStatus.PENDING_REVIEW,
            created_at=now,
        )
        db.session.add_all([flag, task, removal, message, application])
        db.session.commit()
        return {
            **ids,
            "flag": flag.id,
            "task": task.id,
            "message": message.id,
            "application": application.id,
        }


#: Tables a walk may change without touching community B: its own log-in's traces.
_TRACES = {"audit_entries", "attempt_counters"}


def everything(app, but_user: str) -> dict[str, list]:
    """Every row of every table (the walking account's own row aside), to compare."""
    with app.app_context():
        rows = {}
        for table in db.metadata.sorted_tables:
            if table.name in _TRACES:
                continue
            query = sa.select(table)
            if table.name == "staff_users":
                query = query.where(table.c.email != but_user)
            rows[table.name] = sorted(map(tuple, db.session.execute(query)), key=repr)
        return rows


@pytest.mark.parametrize("role", list(ROLES))
def test_staff_of_one_community_reach_nothing_of_another(app, community_b, role):
    """A member of staff of community A, with each role, walks every admin route of the
    url_map (GET with ``?community=`` naming B, and POST with B's ids in the URL and the
    form): ids of B answer 404 (or 403 without the permission), the pages without ids show
    nothing of B, and nothing anywhere changes (nothing refunded, granted, sent, …)."""
    a = community_a(app)
    b = community_b
    # Someone on both teams: A's owner sees them, but may not act on their account.
    shared = staff_of(app, a, "moderator", "both@example.com")
    with app.app_context():
        both = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == shared))
        set_role(both, b["community_id"], "moderator", actor="test", now=utcnow())
        db.session.commit()
        b = {**b, "user_id": both.id}
    email = staff_of(app, a, role)
    before = everything(app, but_user=email)
    with app.app_context():
        last_entry = db.session.scalar(sa.select(sa.func.max(AuditEntry.id)))
    client = logged_in_as(app, email)
    csrf = page_csrf(client)
    # What the forms of the list pages name: B's rows; and adding someone to B's team.
    form = {
        "task": b["task"],
        "message": b["message"],
        "flag": b["flag"],
        "application": b["application"],
        "community": b["community_id"],
        "role": "owner",
        "email": "intruder@example.com",
        "name": "intruder",
        "password": PASSWORD,
        "action": "reset_password",
        "reason": "probe",
        "amount": "1.00",
    }
    permissions = ROLES[role][1]
    walked = set()
    for rule in admin_rules(app):
        needed = app.view_functions[rule.endpoint].required_permission
        for method in methods(rule):
            status, body = visit(client, rule, method, b, csrf, form)
            walked.add((method, rule.rule))
            where = (role, method, rule.rule, status)
            if needed not in permissions:
                assert status == 403, where
            elif rule.endpoint == "core_admin.change_staff":
                assert status == 403, where  # on A's team, but the account acts in B too
            elif rule.arguments:
                assert status == 404, where
            else:  # a list, or a form naming B's rows (404) or a community (refused)
                assert status in (200, 302, 403, 404), where
                assert MARK not in body.lower(), where
                assert f"/payments/{b['payment_id']}/refund" not in body, where
                assert f"/members/{b['member_id']}" not in body, where
    assert len(walked) == sum(len(methods(rule)) for rule in admin_rules(app)) > 80
    assert everything(app, but_user=email) == before
    with app.app_context():
        actions = db.session.scalars(
            sa.select(AuditEntry.action).where(AuditEntry.id > (last_entry or 0))
        ).all()
    assert set(actions) <= {"staff.logged_in"}
    # The control: the same person does see their own community.
    assert "甲社群" in client.get(f"/admin/communities/{a}", query_string={"community": ""}).text


def team_csrf(client) -> str:
    page = client.get("/admin/staff").text
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def roles_of(app, email: str) -> dict[int, str]:
    with app.app_context():
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == email))
        return {role.community_id: role.role for role in user.roles}


@pytest.mark.parametrize("role", list(ROLES))
def test_a_community_statement_is_reconciled_by_its_own_staff_only(app, community_b, apis, role):
    """The reconcile page when community A has its own WeChat Pay merchant (and B too): a
    role of A that may export A's revenue reconciles A's own account and nothing else
    (neither B's account nor the install's, which spans B); the other roles get a 403.
    Naming B's account changes nothing and shows nothing of B."""
    a, b = community_a(app), community_b["community_id"]
    for community in (a, b):
        give_wechatpay(app, apis, community)
    client = logged_in_as(app, staff_of(app, a, role))
    page = client.get("/admin/payments/reconcile")
    if "finance.export" not in ROLES[role][1]:
        assert page.status_code == 403
        return
    assert page.status_code == 200
    choices = re.findall(r'<option value="([^"]*)"', page.text)
    assert choices == [str(a)]
    before = everything(app, but_user=f"{role}-{a}@example.com")
    for account in (str(b), ""):
        answer = client.post(
            "/admin/payments/reconcile",
            data={
                "csrf_token": page_csrf(client),
                "community": account,
                "provider": "wechatpay",
                "day": "2026-11-24",
            },
        )
        assert answer.status_code == 422, (role, account)
        assert MARK not in answer.text.lower()
    assert everything(app, but_user=f"{role}-{a}@example.com") == before


def test_the_install_owner_gives_a_new_community_its_first_owner(app, demo, admin):
    client = logged_in_as_admin(app)
    a = community_a(app)
    token = team_csrf(client)
    added = client.post(
        "/admin/staff",
        data={
            "csrf_token": token,
            "email": "alpha-owner@example.com",
            "name": "甲班长",
            "community": a,
            "role": "owner",
            "password": "first password",
        },
    )
    assert added.status_code == 302
    assert roles_of(app, "alpha-owner@example.com") == {a: "owner"}
    with app.app_context():
        entry = db.session.scalar(
            sa.select(AuditEntry).where(
                AuditEntry.action == "staff.role_changed", AuditEntry.community_id == a
            )
        )
        assert entry.data == {"community": a, "from": None, "to": "owner"}
        user = db.session.scalar(
            sa.select(StaffUser).where(StaffUser.email == "alpha-owner@example.com")
        )
        assert user.must_change_password and not user.install_owner
        user.must_change_password = False
        db.session.commit()
    # That owner manages A's team, and only A's: B is no choice on their team page.
    owner = app.test_client()
    log_in(owner, email="alpha-owner@example.com", password="first password")
    page = owner.get("/admin/staff").text
    assert f'<option value="{a}"' in page and f'<option value="{demo.id}"' not in page
    assert owner.get("/admin/communities/new").status_code == 403


def test_a_community_owner_manages_the_roles_of_their_community_only(app, demo):
    a = community_a(app)
    owner = logged_in_as(app, staff_of(app, a, "owner", "alpha-owner@example.com"))
    staff_of(app, a, "moderator", "both@example.com")
    only_b = staff_of(app, demo.id, "admin", "bravo-admin@example.com")
    with app.app_context():
        ids = dict(db.session.execute(sa.select(StaffUser.email, StaffUser.id)).all())
    token = team_csrf(owner)

    def change(email, **data):
        return owner.post(f"/admin/staff/{ids[email]}", data={"csrf_token": token, **data})

    # In A: a new role, then none; each audited on A.
    assert change("both@example.com", action="role", community=a, role="admin").status_code == 302
    assert roles_of(app, "both@example.com") == {a: "admin"}
    assert change("both@example.com", action="role", community=a, role="").status_code == 302
    assert roles_of(app, "both@example.com") == {}
    # Someone of B's team only is not found; for someone on both teams, B's role is not
    # A's owner's to change, nor is their account (it acts in B too).
    assert change(only_b, action="reset_password").status_code == 404
    staff_of(app, a, "moderator", "again@example.com")
    with app.app_context():
        again = db.session.scalar(
            sa.select(StaffUser).where(StaffUser.email == "again@example.com")
        )
        set_role(again, demo.id, "moderator", actor="test", now=utcnow())
        db.session.commit()
        ids["again@example.com"] = again.id
    refused = change("again@example.com", action="role", community=demo.id, role="owner")
    assert refused.status_code == 400
    assert change("again@example.com", action="reset_password").status_code == 403
    assert change("again@example.com", action="disable").status_code == 403
    assert roles_of(app, "again@example.com") == {a: "moderator", demo.id: "moderator"}
    # Adding someone who exists already gives them a role in A, not a new password.
    added = owner.post(
        "/admin/staff",
        data={"csrf_token": token, "email": only_b, "community": a, "role": "moderator"},
    )
    assert added.status_code == 302
    assert roles_of(app, only_b) == {demo.id: "admin", a: "moderator"}
    with app.app_context():
        logged = db.session.scalars(
            sa.select(AuditEntry.data).where(AuditEntry.action == "staff.role_changed")
        ).all()
    assert {"community": a, "from": "moderator", "to": "admin"} in logged
    assert {"community": a, "from": "admin", "to": None} in logged


def test_a_role_change_ends_the_sessions_and_disabling_locks_out(app, demo, admin):
    client = logged_in_as_admin(app)
    email = staff_of(app, demo.id, "finance", "money@example.com")
    with app.app_context():
        user_id = db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == email))
    other = logged_in_as(app, email)
    assert other.get("/admin/").status_code == 200
    token = team_csrf(client)
    client.post(
        f"/admin/staff/{user_id}",
        data={"csrf_token": token, "action": "role", "community": demo.id, "role": "moderator"},
    )
    assert other.get("/admin/").status_code == 302  # the session ended with the change
    assert roles_of(app, email) == {demo.id: "moderator"}
    client.post(f"/admin/staff/{user_id}", data={"csrf_token": token, "action": "disable"})
    with app.app_context():
        assert db.session.get(StaffUser, user_id).active is False
    again = app.test_client()
    log_in(again, email=email, password=PASSWORD)
    assert again.get("/admin/").status_code == 302  # disabled: not logged in
    own = client.post(f"/admin/staff/{admin.id}", data={"csrf_token": token, "action": "disable"})
    assert own.status_code == 302
    with app.app_context():
        assert db.session.get(StaffUser, admin.id).active is True
    audit = client.get("/admin/audit", query_string={"target_type": "staff_users"}).text
    assert 'data-action="staff.role_changed"' in audit
    assert 'data-action="staff.disabled"' in audit
    assert PASSWORD not in audit


def test_lists_follow_the_community_picked(app, community_b, admin):
    """An install owner sees every community's payments; picking A (remembered in the
    session) hides B's, picking none shows them again."""
    a = community_a(app)
    client = logged_in_as_admin(app)
    refund_link = f"/payments/{community_b['payment_id']}/refund"
    listed = "/admin/payments/payments"
    assert refund_link in client.get(listed).text
    assert refund_link not in client.get(listed, query_string={"community": a}).text
    assert refund_link not in client.get(listed).text
    assert 'data-action="payment.confirmed"' not in client.get("/admin/audit").text  # B's
    assert refund_link in client.get(listed, query_string={"community": ""}).text
    assert 'data-action="payment.confirmed"' in client.get("/admin/audit").text


def test_the_create_admin_command_gives_a_role_in_one_community(app, demo, runner):
    """CLI commands are the install operator's (who may act on every community); this one
    can make an account of one community."""
    result = runner.invoke(
        args=[
            *("create-admin", "--email", "mod@example.com", "--name", "版主"),
            *("--role", "moderator", "--community", "demo"),
        ],
        env={"ADMIN_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    assert roles_of(app, "mod@example.com") == {demo.id: "moderator"}
    unknown = runner.invoke(
        args=["create-admin", "--email", "x@example.com", "--name", "x", "--community", "nope"],
        env={"ADMIN_PASSWORD": PASSWORD},
    )
    assert unknown.exit_code != 0 and "nope" in unknown.output


@pytest.mark.committing
def test_an_upgraded_install_keeps_its_staff_working(tmp_path, _api_server):
    """The migration gives each account its old role in every community, and the old
    owners the install."""
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        flask_migrate.downgrade(revision="f7a8b9c0d1e2")
        connection = db.session.connection()
        now = utcnow()
        for slug in ("one", "two"):
            connection.execute(
                sa.text(
                    "INSERT INTO communities (name, slug, pitch, rules, currency, time_zone, "
                    "member_number_pattern, last_member_number, staff_number_pattern, "
                    "last_staff_number, pay_link_days, reminder_days, coupons_back_on_refund, "
                    "created_at) VALUES (:slug, :slug, '', '', 'CNY', 'Asia/Shanghai', '####', "
                    "0, 'LS-##', 0, 7, 7, false, :now)"
                ),
                {"slug": slug, "now": now},
            )
        for email, role in (("boss@example.com", "owner"), ("mod@example.com", "moderator")):
            connection.execute(
                sa.text(
                    "INSERT INTO staff_users (email, name, password_hash, role, active, "
                    "created_at, session_epoch, must_change_password) "
                    "VALUES (:email, :email, 'x', :role, true, :now, 1, false)"
                ),
                {"email": email, "role": role, "now": now},
            )
        db.session.commit()
        flask_migrate.upgrade()
        users = {u.email: u for u in db.session.scalars(sa.select(StaffUser))}
        communities = set(db.session.scalars(sa.select(Community.id)))
        assert len(communities) == 2
        assert users["boss@example.com"].install_owner
        assert not users["mod@example.com"].install_owner
        for email, role in (("boss@example.com", "owner"), ("mod@example.com", "moderator")):
            held = {r.community_id: r.role for r in users[email].roles}
            assert held == dict.fromkeys(communities, role)


def test_a_token_of_one_community_reaches_nothing_of_another(app, community_b, client):
    """The API: a token of A with every scope cannot read or change B's member, its
    memberships, orders, perks or coupons."""
    a = community_a(app)
    b = community_b
    with app.app_context():
        _token, secret = create_token(a, "bot", list(SCOPES), actor="test", now=utcnow())
        membership_id = db.session.scalar(
            sa.select(Membership.id).where(Membership.member_id == b["member_id"])
        )
        db.session.commit()
    before = everything(app, but_user="")
    headers = {"Authorization": f"Bearer {secret}"}
    member = f"/api/v1/members/{b['member_id']}"
    for url in (member, f"{member}/invitations"):
        assert client.get(url, headers=headers).status_code == 404, url
    for url in ("/api/v1/members", "/api/v1/orders", "/api/v1/perks", "/api/v1/events"):
        answer = client.get(url, headers=headers)
        assert answer.status_code == 200, url
        listed = answer.json if isinstance(answer.json, list) else answer.json["items"]
        assert listed == [], url
    writes = {
        f"{member}/memberships": {"tier": "main", "reason": "probe"},
        f"/api/v1/memberships/{membership_id}/end": {"reason": "probe"},
        f"/api/v1/perks/{b['perk_id']}/redemptions": {"member": b["member_id"]},
        f"{member}/coupons": {"code": "X1"},
    }
    for url, body in writes.items():
        assert client.post(url, json=body, headers=headers).status_code in (404, 422), url
    after = everything(app, but_user="")
    # The token's last-used time is the only thing that may move.
    before.pop("api_tokens"), after.pop("api_tokens")
    assert after == before


def test_pages_carry_security_headers(client, demo):
    response = client.get("/join/demo")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_every_inline_script_carries_the_nonce_its_page_allows(client, demo):
    """The join form's and the login page's contact scripts come from a macro imported
    without the page's context: they carry the request's nonce too, or the browser blocks
    them (an e-mail would be typed on a phone's number pad)."""
    for url in ("/join/demo/main", "/join/demo/login"):
        response = client.get(url)
        allowed = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"])
        nonces = re.findall(r"<script nonce=\"([^\"]*)\"", response.text)
        assert nonces, url
        assert set(nonces) == {allowed.group(1)}, url
