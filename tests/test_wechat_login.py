"""Logging in with WeChat inside WeChat: the openid WeChat's OAuth verifies (through a
local fake of WeChat's OAuth API) finds the member; one WeChat is one member."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from core.db import db
from membership.models import Member
from payments.models import Payment
from tests import fake_apis
from tests.helpers import csrf_token, log_in_member, submit_form, submit_join, wechat_paid
from tests.test_wechatpay import IN_WECHAT

GOOD = {"code": "good-code"}


def in_wechat(app):
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    return client


def oauth_round_trip(client, start_url: str, code: str = "good-code"):
    """Follow our redirect to WeChat's authorize page and come back with ``code``."""
    to_wechat = client.get(start_url)
    assert to_wechat.location.startswith("https://open.weixin.qq.com/connect/oauth2/authorize")
    query = parse_qs(urlsplit(to_wechat.location).query)
    back = urlsplit(query["redirect_uri"][0]).path
    return client.get(back, query_string={"code": code, "state": query["state"][0]})


def pay_in_wechat(app, client):
    """Join the ¥99 tier inside WeChat: the join's silent OAuth (which proves them and
    gives JSAPI its openid), then WeChat Pay's notification."""
    submit_join(client, "main", provider="wechatpay")
    with app.app_context():
        body = wechat_paid(db.session.scalars(sa.select(Payment)).one())
    assert client.post("/webhooks/wechatpay", data=body).status_code == 200


def test_paying_inside_wechat_links_the_openid_and_logs_in_later(app, demo, apis):
    pay_in_wechat(app, in_wechat(app))
    with app.app_context():
        assert db.session.scalar(sa.select(Member.wechat_openid)) == fake_apis.WECHAT_OPENID
    later = in_wechat(app)
    assert "微信一键登录" in later.get("/join/demo/login").text
    response = oauth_round_trip(later, "/join/demo/login/wechat")
    assert response.location == "/me"
    assert 'id="member-number">0001<' in later.get("/me").text


def test_an_unknown_wechat_is_sent_to_the_code_login(app, demo, apis):
    stranger = in_wechat(app)
    response = oauth_round_trip(stranger, "/join/demo/login/wechat")
    assert response.location.startswith("/join/demo/login")
    assert "没有找到绑定这个微信的成员" in stranger.get(response.location).text
    assert stranger.get("/me").status_code == 401


def test_a_refused_oauth_code_logs_nobody_in(app, demo, apis):
    pay_in_wechat(app, in_wechat(app))
    other = in_wechat(app)
    response = oauth_round_trip(other, "/join/demo/login/wechat", code="stolen")
    assert "微信授权失败" in other.get(response.location).text
    assert other.get("/me").status_code == 401


def test_a_forged_state_is_refused(client, demo):
    bad = client.get("/join/demo/login/wechat/return", query_string={"code": "x", "state": "y"})
    assert bad.status_code == 400


def test_members_bind_wechat_from_their_page_once(app, demo, apis):
    phone_member = in_wechat(app)
    submit_join(app.test_client(), "lobby", provider=None, contact_value="13800138000")
    log_in_member(app, phone_member, "13800138000")
    page = phone_member.get("/me").text
    assert "绑定微信" in page
    back = oauth_round_trip(phone_member, "/join/demo/login/wechat?bind=1")
    assert back.location == "/me"
    with app.app_context():  # a GET never binds: the member confirms on their page
        assert db.session.scalar(sa.select(Member.wechat_openid)) is None
    assert 'id="confirm-wechat"' in phone_member.get("/me").text
    confirmed = phone_member.post(
        "/me/wechat", data={"csrf_token": csrf_token(phone_member, "/me")}
    )
    assert confirmed.status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(Member.wechat_openid)) == fake_apis.WECHAT_OPENID
    second = in_wechat(app)
    submit_join(app.test_client(), "lobby", provider=None, contact_value="13900139000")
    log_in_member(app, second, "13900139000")
    response = oauth_round_trip(second, "/join/demo/login/wechat?bind=1")
    assert "这个微信已绑定其他成员" in second.get(response.location).text
    with app.app_context():
        openids = db.session.scalars(sa.select(Member.wechat_openid).order_by(Member.id)).all()
    assert openids == [fake_apis.WECHAT_OPENID, None]


def test_one_wechat_cannot_join_as_a_second_member(app, demo, apis):
    browser = in_wechat(app)
    pay_in_wechat(app, browser)
    assert browser.get("/me").status_code == 401  # not logged in: WeChat only says who
    response = submit_form(
        browser,
        "/join/demo/main",
        {
            "display_name": "又一个我",
            "contact_kind": "phone",
            "contact_value": "13700137000",
            "accept_rules": "y",
            "provider": "fake",
            "submission_key": "k" * 24,
        },
    )
    assert response.status_code == 422
    assert "该联系方式已是本社群成员，请先登录" in response.text
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Member.id))) == 1
