"""Findings of the admin review (issue 15): who sees money, whose membership an admin page
may end, free renewals, plain values for file fields, anonymous admins, search wildcards."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from flask import url_for
from markupsafe import escape
from werkzeug.routing import IntegerConverter

from core.auth import create_staff_user
from core.db import db
from membership.cli import _qr_png
from membership.models import Application, Group, Member, Membership, MembershipStatus, Tier
from payments.models import Order
from tests.helpers import (
    ADMIN_PASSWORD,
    count,
    csrf_token,
    hidden_value,
    join_and_pay,
    log_in,
    log_in_member,
    new_phone,
    submit_form,
    submit_join,
)

REVENUE = "近30天收入"


def _staff(app, role: str) -> str:
    """A staff account with ``role``; its e-mail."""
    email = f"{role}@example.com"
    with app.app_context():
        create_staff_user(email, role, ADMIN_PASSWORD, actor="test", role=role)
        db.session.commit()
    return email


@pytest.mark.parametrize(
    ("role", "sees"), [("moderator", False), ("admin", False), ("finance", True), ("owner", True)]
)
def test_only_staff_with_the_money_permission_see_revenue(app, demo, role, sees):
    join_and_pay(app.test_client())  # ¥99 of revenue today
    browser = app.test_client()
    assert log_in(browser, _staff(app, role)).status_code == 302
    page = browser.get(f"/admin/communities/{demo.id}")
    assert page.status_code == 200
    assert (REVENUE in page.text) is sees
    total = re.search(r'id="revenue"><span class="muted">[^<]+</span><strong>¥99.00<', page.text)
    assert (total is not None) is sees
    assert ('aria-label="每日收入' in page.text) is sees  # the chart of revenue per day
    assert 'id="funnel"' in page.text  # counts of people are not money


def test_a_members_page_cannot_end_another_members_membership(app, demo, logged_in):
    join_and_pay(app.test_client(), display_name="甲")
    join_and_pay(app.test_client(), display_name="乙")
    with app.app_context():
        first, second = db.session.scalars(sa.select(Member).order_by(Member.id)).all()
        first_id, second_membership = first.id, second.memberships[0].id
    response = submit_form(
        logged_in,
        f"/admin/members/{first_id}",
        {"action": "end", "membership": str(second_membership), "reason": "别人的"},
    )
    assert response.status_code == 404
    with app.app_context():
        assert db.session.get(Membership, second_membership).status is MembershipStatus.ACTIVE


def test_a_free_tier_with_a_term_is_not_renewed(app, demo):
    with app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "lobby")).duration_days = 30
        db.session.commit()
    phone = new_phone()
    submit_join(
        app.test_client(), "lobby", provider=None, contact_kind="phone", contact_value=phone
    )
    browser = app.test_client()
    log_in_member(app, browser, phone)
    page = browser.get("/me").text
    assert "/me/renew/" not in page  # nothing to renew: no button
    with app.app_context():
        membership_id = db.session.scalar(sa.select(Membership.id))
    response = browser.post(
        f"/me/renew/{membership_id}",
        data={"csrf_token": hidden_value(page, "csrf_token"), "provider": "fake"},
    )
    assert response.status_code == 302
    assert "免费档位无需续费" in browser.get(response.location).text
    with app.app_context():
        assert count(Order) == 0
        assert count(Application) == 1  # the lobby's own: no renewal was started


@pytest.mark.parametrize("existing", [False, True])
def test_a_group_qr_sent_as_a_plain_field_is_a_form_error(app, logged_in, demo, existing):
    with app.app_context():
        group = db.session.scalar(sa.select(Group).order_by(Group.id))
        if existing:  # the stored image must not pass for an upload either
            group.qr_image, group.qr_mime = _qr_png("stored"), "image/png"
            db.session.commit()
        group_id = group.id
    url = (
        f"/admin/groups/{group_id}/edit" if existing else f"/admin/communities/{demo.id}/groups/new"
    )
    fields = {"name": "纯文本", "platform": "wechat", "capacity": "100"}
    response = submit_form(logged_in, url, {**fields, "qr_image": "not-a-file"})
    assert response.status_code == 422
    assert "请上传图片文件" in response.text
    with app.app_context():
        assert count(Group) == 2
        assert db.session.scalar(sa.select(Group.name).where(Group.name == "纯文本")) is None
    if existing:  # saving without a new image keeps the stored one
        assert submit_form(logged_in, url, fields).status_code == 302
        with app.app_context():
            assert db.session.get(Group, group_id).qr_image == _qr_png("stored")


def _admin_urls(app) -> list[tuple[str, str]]:
    """Every admin page (but the login page) as (method, URL), ids filled in with 1."""
    urls = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "auth.login":
            continue
        values = {
            name: 1 if isinstance(rule._converters[name], IntegerConverter) else "x"
            for name in rule.arguments
        }
        with app.test_request_context():
            url = url_for(rule.endpoint, **values)
        urls += [(method, url) for method in sorted(rule.methods & {"GET", "POST"})]
    return urls


def test_every_admin_page_sends_anonymous_visitors_to_the_login(app, client, demo):
    urls = _admin_urls(app)
    assert ("GET", "/admin/communities/1/perks") in urls
    assert ("POST", "/admin/coupons/1/issue") in urls
    token = csrf_token(client, "/admin/login")  # a POST must get past the CSRF check first
    for method, url in urls:
        response = client.open(url, method=method, data={"csrf_token": token})
        assert response.status_code == 302, (method, url, response.status_code)
        assert response.location.startswith("/admin/login?next="), (method, url)


@pytest.mark.parametrize(
    ("search", "found"), [("%", "百分之百%"), ("_", "下划线_君"), ("\\", "反斜杠\\")]
)
def test_member_search_takes_wildcards_literally(app, demo, logged_in, search, found):
    names = ["百分之百%", "下划线_君", "反斜杠\\", "普通人"]
    for number, name in enumerate(names):  # WeChat IDs without wildcards (random ones may)
        join_and_pay(app.test_client(), display_name=name, wechat_id=f"wxsearch{number}")
    page = logged_in.get(f"/admin/communities/{demo.id}/members", query_string={"q": search})
    listed = [name for name in names if escape(name) in page.text]
    assert listed == [found]
