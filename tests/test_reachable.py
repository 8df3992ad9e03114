"""Every member reachable: the join ends with at least one proven channel (a phone or an
e-mail proven by a code, or WeChat's openid inside WeChat); members who joined before
without one are listed for admins and asked on their page."""

from __future__ import annotations

import sqlalchemy as sa
from flask import url_for

from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage
from core.security import sign
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Member,
    Membership,
)
from payments.models import Payment
from tests import fake_apis
from tests.helpers import (
    PROSPECT,
    cashier_action,
    count,
    csrf_token,
    join_and_pay,
    latest_code,
    log_in_member,
    new_phone,
    prove_join,
    submit_join,
    wechat_round_trip,
)
from tests.test_wechat_login import in_wechat


def _member(app, **where) -> Member:
    with app.app_context():
        member = db.session.scalars(sa.select(Member).filter_by(**where)).one()
        db.session.expunge(member)
        return member


def test_outside_wechat_a_wechat_id_alone_cannot_finish_joining(app, client, demo):
    # A WeChat ID is how moderators recognise someone, never a channel: alone, refused.
    for fields in ({"contact_value": ""}, {"contact_kind": "wechat", "contact_value": "wx_wang88"}):
        refused = submit_join(client, "main", **fields)
        assert refused.status_code == 422, fields
    assert "请填写手机号或邮箱" in submit_join(client, "main", contact_value="").text

    # With a phone, the join stops at the code step: nothing can be paid before it.
    phone = new_phone()
    stopped = submit_join(client, "main", prove=False, contact_value=phone)
    assert "/verify/" in stopped.location
    public_id = stopped.location.rsplit("/", 1)[-1].split("?")[0]
    status = f"/join/demo/status/{public_id}"
    assert 'id="proof-needed"' in client.get(status).text
    tried = client.post(
        f"{status}/pay",
        data={"csrf_token": csrf_token(client, stopped.location), "provider": "fake"},
    )
    assert "/verify/" in tried.location
    with app.app_context():
        assert count(Payment) == 0 and count(Member) == 0
        application = db.session.scalar(sa.select(Application))
        assert application.status is ApplicationStatus.AWAITING_PROOF
        assert application.wechat_id == PROSPECT["wechat_id"]

    # The code comes back: on to pay.
    cashier = prove_join(client, stopped.location)
    assert cashier.location.startswith("/fake-pay/")


def test_a_wrong_code_is_refused_and_nothing_is_admitted(app, client, demo):
    phone = new_phone()
    stopped = submit_join(client, "lobby", provider=None, prove=False, contact_value=phone)
    right = latest_code(app)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    refused = prove_join(client, stopped.location, code=wrong)
    assert refused.status_code == 422
    assert "验证码不正确" in refused.text
    with app.app_context():
        assert count(Member) == count(Membership) == 0
        assert db.session.scalars(sa.select(OutboxMessage.routes)).one() == [["sms", phone]]

    admitted = prove_join(client, stopped.location, code=right)
    assert "/status/" in admitted.location
    with app.app_context():
        member = db.session.scalar(sa.select(Member))
        assert member.contact_proven_at is not None
        assert count(Membership) == 1
    # Proven once: the code step now leads to the status page, and nothing more is made.
    assert "/status/" in client.get(stopped.location).location
    with app.app_context():
        assert count(Membership) == 1


def test_the_proven_phone_is_the_members_proven_contact(app, demo):
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=phone, wechat_id="reader_li")
    member = _member(app, contact_value=phone)
    assert member.contact_kind is ContactKind.PHONE
    assert member.contact_proven_at is not None and member.is_reachable
    assert member.wechat_id == "reader_li"
    # Proven already: logging in proves nothing new, and /me asks for nothing.
    browser = app.test_client()
    assert log_in_member(app, browser, phone).location == "/me"
    assert 'id="unreachable"' not in browser.get("/me").text
    assert _member(app, contact_value=phone).credential_version == member.credential_version


def test_a_proven_member_joining_as_themselves_needs_no_new_proof(app, demo):
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=phone)
    assert _member(app, contact_value=phone).is_reachable  # the join proved the phone
    browser = app.test_client()
    log_in_member(app, browser, phone)
    with app.app_context():
        sent = count(OutboxMessage)
    response = submit_join(browser, "lobby", provider=None, prove=False)
    assert "/status/" in response.location  # no code step
    with app.app_context():
        assert count(OutboxMessage) == sent
        assert count(Member) == 1
        assert count(Membership) == 2


def test_inside_wechat_the_join_finishes_with_the_openid(app, demo, apis):
    browser = in_wechat(app)
    form = browser.get("/join/demo/main").text
    assert "选填" in form  # the phone is optional: WeChat proves who they are
    cashier = submit_join(browser, "main", contact_value="", wechat_id="wang_reader88")
    assert cashier.location.startswith("/fake-pay/")
    cashier_action(browser, cashier.location)
    member = _member(app)
    assert member.wechat_openid == fake_apis.WECHAT_OPENID and member.is_reachable
    assert (member.contact_kind, member.wechat_id) == (ContactKind.WECHAT, "wang_reader88")
    with app.app_context():
        assert count(OutboxMessage) == 0  # no code needed
    # The same WeChat cannot become a second member.
    again = in_wechat(app)
    stopped = submit_join(again, "main", prove=False, contact_value="", wechat_id="other_id1")
    back = again.get(stopped.location)
    assert back.location.startswith("https://open.weixin.qq.com/")
    refused = wechat_round_trip(again, stopped.location)
    assert refused.location.startswith("/join/demo/login")
    assert "请先登录" in again.get(refused.location).text
    with app.app_context():
        assert count(Member) == 1


def _legacy_member(app, **fields) -> int:
    """A member who joined before every join proved a channel."""
    with app.app_context():
        member = Member(
            community=db.session.scalar(sa.select(Community)),
            display_name=fields.pop("display_name", "老成员"),
            contact_kind=fields.pop("contact_kind", ContactKind.WECHAT),
            contact_value=fields.pop("contact_value", "old_reader01"),
            created_at=utcnow(),
            **fields,
        )
        db.session.add(member)
        db.session.commit()
        return member.id


def test_admins_see_the_members_without_a_proven_channel(app, demo, logged_in):
    _legacy_member(app, display_name="只有微信号")
    _legacy_member(
        app, display_name="未验证手机", contact_kind=ContactKind.PHONE, contact_value=new_phone()
    )
    _legacy_member(
        app, display_name="绑了微信", contact_value="old_reader02", wechat_openid="o-legacy"
    )
    join_and_pay(app.test_client(), "main", display_name="新成员")
    url = f"/admin/communities/{demo.id}/members"
    everyone = logged_in.get(url).text
    assert all(name in everyone for name in ("只有微信号", "未验证手机", "绑了微信", "新成员"))
    page = logged_in.get(url, query_string={"reach": "none"}).text
    assert "无可达渠道</span>" in page
    listed = [n for n in ("只有微信号", "未验证手机", "绑了微信", "新成员") if n in page]
    assert listed == ["只有微信号", "未验证手机"]


def test_me_asks_a_member_without_a_proven_channel(app, demo):
    member_id = _legacy_member(app)
    browser = app.test_client()
    with app.test_request_context():
        link = url_for(
            "membership.member_link", token=sign("member-link", {"id": member_id, "version": 1})
        )
    assert browser.get(link).location == "/me"
    page = browser.get("/me").text
    assert 'id="unreachable"' in page and "我们还联系不到你" in page

    phone = new_phone()
    asked = browser.post(
        "/me/channel",
        data={
            "csrf_token": csrf_token(browser, "/me"),
            "contact_kind": "phone",
            "contact_value": phone,
        },
    )
    assert asked.location.startswith("/me/channel/")
    code = latest_code(app)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    refused = browser.post(
        asked.location, data={"csrf_token": csrf_token(browser, asked.location), "code": wrong}
    )
    assert refused.status_code == 422
    assert _member(app, id=member_id).contact_proven_at is None
    proven = browser.post(
        asked.location, data={"csrf_token": csrf_token(browser, asked.location), "code": code}
    )
    assert proven.location == "/me"
    page = browser.get("/me")
    assert page.status_code == 200 and 'id="unreachable"' not in page.text
    member = _member(app, id=member_id)
    assert (member.contact_kind, member.contact_value) == (ContactKind.PHONE, phone)
    assert member.contact_proven_at is not None and member.is_reachable
