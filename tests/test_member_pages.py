"""The prospect's and member's pages: one language at a time, the success page as
numbered steps, one QR code to scan, the paid pay link, phone keyboards, post-redirect-get,
logging in from /me, link previews (meta tags, WeChat's JS-SDK share settings), the
favicon and versioned static files."""

from __future__ import annotations

import hashlib
import json
import re
from html import unescape
from urllib.parse import urlsplit

import sqlalchemy as sa

from core.db import db
from core.static_files import VERSIONED_MAX_AGE
from membership.models import Community, Member
from tests import fake_apis, test_screening
from tests.helpers import (
    cashier_action,
    csrf_token,
    join_and_pay,
    latest_code,
    log_in_member,
    new_phone,
    open_join_form,
    submit_form,
)
from tests.test_screening import apply, pay_link, pending_ids, review

WECHAT_UA = (
    "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/116.0 Mobile Safari/537.36 MicroMessenger/8.0.47.2560"
)
#: The screened tier's fixture, from its own module.
screened = test_screening.screened
HAN = re.compile(r"[\u4e00-\u9fff]")


def visible_text(html: str) -> str:
    """The words a reader sees: no tags, scripts or the language switch's own names."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.DOTALL)
    html = re.sub(r'<nav class="languages".*?</nav>', " ", html, flags=re.DOTALL)
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_the_success_page_is_numbered_steps_with_the_nickname_to_set(app, client, demo):
    status = join_and_pay(client, "main", display_name="小猫")
    page = client.get(status).text
    steps = re.findall(r'<li id="(step-[a-z]+)">', page)
    assert steps == ["step-join", "step-nickname", "step-trouble", "step-link"]
    assert re.search(r'id="group-nickname">0001-小猫<', page)
    assert page.count('<img class="qr"') == 1
    assert "二维码过期或群已满怎么办" in page
    # The member link is shown as text to long-press, with a copy button for JavaScript.
    assert re.search(r'id="member-link">http://qunmen\.test/me/link/', page) or (
        'id="login-later"' in page
    )


def test_the_member_link_step_offers_the_link_and_a_copy_button(app, client, demo):
    phone = new_phone()
    status = join_and_pay(client, "main", contact_value=phone)
    log_in_member(app, client, phone)  # a proven login: the link may be shown
    page = client.get(status).text
    assert re.search(r'id="member-link">http://qunmen\.test/me/link/[^<]+<', page)
    assert re.search(r'<button type="button"[^>]*id="copy-link"[^>]*hidden>复制链接<', page)


def test_a_screened_member_sees_one_qr_the_main_group_s(app, client, screened, logged_in):
    status = apply(client, screened).location
    waiting = client.get(status).text
    assert waiting.count('<img class="qr"') == 1 and "大厅群" in waiting  # the lobby, for now
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    to_cashier = submit_form(client, link, {"provider": "fake"})
    result = cashier_action(client, to_cashier.location, "pay").location
    page = client.get(result).text
    assert page.count('<img class="qr"') == 1
    assert "正式一群" in page and "大厅群" not in page
    log_in_member(app, client, "13800138000")  # the phone the application gave
    me = client.get("/me").text
    assert me.count('<img class="qr"') == 1 and "大厅群" not in me
    # The lobby's invitation, revoked, leaves no empty card behind.
    assert page.count('class="card invitation"') == me.count('class="card invitation"') == 1


def test_a_paid_pay_link_says_paid_and_leads_to_the_result(app, client, screened, logged_in):
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    to_cashier = submit_form(client, link, {"provider": "fake"})
    result = cashier_action(client, to_cashier.location, "pay").location
    page = client.get(link)
    assert page.status_code == 200
    assert 'id="paid"' in page.text and "已付款" in page.text
    href = re.search(r'id="paid-result" href="([^"]+)"', page.text).group(1)
    assert href == urlsplit(result).path
    assert "失效" not in page.text
    # Sending the form again changes nothing and asks nothing: back to the page.
    token = csrf_token(client, "/join/demo/login")  # the paid link's page has no form
    again = client.post(link, data={"csrf_token": token, "provider": "fake"})
    assert again.status_code == 302 and again.location == link


def test_a_page_in_english_has_no_chinese_interface_text(app, client, demo):
    client.get("/lang/en")
    status = join_and_pay(client, "main")
    for path in ("/join/demo", "/join/demo/main", status, "/join/demo/login", "/nope"):
        text = visible_text(client.get(path).text)
        # Operator content (the community's, tiers' and groups' names, rules) is Chinese
        # in the demo: take it out, then no Chinese may remain.
        with app.app_context():
            community = db.session.scalar(sa.select(Community))
            content = [community.name, community.pitch, community.rules]
            content += [line for tier in community.tiers for line in tier.include_lines]
            content += [tier.name for tier in community.tiers]
            content += [group.name for group in community.groups]
            content += [m.display_name for m in db.session.scalars(sa.select(Member))]
        for piece in sorted(filter(None, content), key=len, reverse=True):
            text = text.replace(piece, "")
        assert not HAN.search(text), (path, HAN.findall(text)[:20], text[:2000])


def test_a_page_in_chinese_has_no_english_sentences(app, client, demo):
    status = join_and_pay(client, "main")
    for path in ("/join/demo", "/join/demo/main", status, "/join/demo/login", "/me"):
        text = visible_text(client.get(path).text)
        sentences = re.findall(r"[A-Z][a-z]+(?: [a-z]+){2,}", text)
        assert not sentences, (path, sentences)


def test_phone_forms_open_the_right_keyboard(app, client, demo):
    form = client.get("/join/demo/main").text
    contact = re.search(r"<input[^>]*id=\"contact_value\"[^>]*>", form).group(0)
    assert 'type="tel"' in contact and 'autocomplete="tel"' in contact
    assert 'inputmode="tel"' in contact
    login = client.get("/join/demo/login").text
    assert 'type="tel"' in re.search(r'<input[^>]*id="contact_value"[^>]*>', login).group(0)
    # Choosing e-mail on the server's side (a refused form comes back as sent) gives the
    # e-mail keyboard.
    refused = submit_form(
        client, "/join/demo/login", {"contact_kind": "email", "contact_value": "not-mail"}
    )
    field = re.search(r'<input[^>]*id="contact_value"[^>]*>', refused.text).group(0)
    assert 'type="email"' in field and 'autocomplete="email"' in field
    # The code: the number pad, and the SMS code offered by the phone.
    response = submit_form(
        client, "/join/demo/login", {"contact_kind": "phone", "contact_value": new_phone()}
    )
    code = re.search(r'<input[^>]*id="code"[^>]*>', client.get(response.location).text).group(0)
    assert 'inputmode="numeric"' in code and 'autocomplete="one-time-code"' in code


def test_every_member_post_that_succeeds_redirects(app, client, demo):
    """Post-redirect-get: the join, the code step, the cashier, the code login, the pay
    again form, a perk, logging out: each successful POST answers with a redirect."""
    phone = new_phone()
    data = {
        **open_join_form(client),
        "display_name": "小王",
        "contact_kind": "phone",
        "contact_value": phone,
        "accept_rules": "y",
        "provider": "fake",
    }
    joined = client.post("/join/demo/main", data=data)
    assert joined.status_code == 302  # to the code step
    verified = submit_form(client, joined.location, {"code": latest_code(app)})
    assert verified.status_code == 302 and verified.location.startswith("/fake-pay/")
    failed = cashier_action(client, verified.location, "fail")
    assert failed.status_code == 302
    status = urlsplit(failed.location).path
    again = client.post(
        status + "/pay", data={"csrf_token": csrf_token(client, status), "provider": "fake"}
    )
    assert again.status_code == 302 and again.location.startswith("/fake-pay/")
    assert cashier_action(client, again.location, "pay").status_code == 302
    asked = submit_form(
        client, "/join/demo/login", {"contact_kind": "phone", "contact_value": phone}
    )
    assert asked.status_code == 302
    logged = submit_form(client, asked.location, {"code": latest_code(app)})
    assert logged.status_code == 302
    out = client.post("/me/logout", data={"csrf_token": csrf_token(client, "/me")})
    assert out.status_code == 302


def test_after_a_code_login_the_member_lands_on_me(app, client, demo):
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=phone)
    response = log_in_member(app, client, phone)
    assert response.status_code == 302 and response.location == "/me"
    # From the community page too: its login link names no other page.
    assert 'href="/join/demo/login"' in app.test_client().get("/join/demo").text
    # A safe next is followed; another site is not.
    other = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=other)
    landed = log_in_member(app, app.test_client(), other, next_path="/join/demo/main")
    assert landed.location == "/join/demo/main"
    evil = log_in_member(app, app.test_client(), other, next_path="//evil.example/")
    assert evil.location == "/me"


def test_me_without_a_session_offers_the_ways_to_log_in(app, client, demo):
    page = client.get("/me")
    assert page.status_code == 401
    assert 'id="login-demo"' in page.text
    assert 'href="/join/demo/login?next=/me"' in page.text
    assert "/login/wechat" not in page.text  # outside WeChat, no WeChat login
    inside = client.get("/me", headers={"User-Agent": WECHAT_UA}).text
    assert 'href="/join/demo/login/wechat?next=/me"' in inside


def test_join_pages_have_a_description_and_open_graph_tags(app, client, demo):
    for path in ("/join/demo", "/join/demo/main"):
        page = client.get(path).text
        meta = dict(re.findall(r'<meta (?:name|property)="([^"]+)" content="([^"]*)"', page))
        assert meta["description"] and meta["og:description"] == meta["description"]
        assert "群门读书会" in meta["og:title"]
        assert meta["og:image"].startswith("http://qunmen.test/static/share.png?v=")
        assert meta["og:url"] == "http://qunmen.test" + path
        assert "jweixin" not in page  # not inside WeChat: no JS-SDK


def test_inside_wechat_the_join_page_carries_signed_share_settings(app, client, demo, apis):
    page = client.get("/join/demo", headers={"User-Agent": WECHAT_UA}).text
    assert re.search(r'<script src="/static/vendor/jweixin-1\.6\.5\.js\?v=\w+" defer>', page)
    config = json.loads(unescape(re.search(r'data-config="([^"]+)"', page).group(1)))
    assert config["appId"] == fake_apis.WECHAT_APP_ID
    assert config["jsApiList"] == ["updateAppMessageShareData", "updateTimelineShareData"]
    # WeChat's signature: SHA-1 of the ticket, nonce, timestamp and the page's address.
    signed = (
        f"jsapi_ticket={fake_apis.WECHAT_JSAPI_TICKET}&noncestr={config['nonceStr']}"
        f"&timestamp={config['timestamp']}&url=http://qunmen.test/join/demo"
    )
    assert config["signature"] == hashlib.sha1(signed.encode()).hexdigest()  # noqa: S324
    # The ticket is kept: a second page asks WeChat for nothing.
    asked = [r for r in apis.requests if r.path == "/cgi-bin/ticket/getticket"]
    client.get("/join/demo/main", headers={"User-Agent": WECHAT_UA})
    assert [r for r in apis.requests if r.path == "/cgi-bin/ticket/getticket"] == asked
    assert len(asked) <= 1


def test_without_an_official_account_no_ticket_is_fetched(app, client, demo, apis):
    app.config["WECHATPAY_APP_SECRET"] = None
    try:
        page = client.get("/join/demo", headers={"User-Agent": WECHAT_UA}).text
    finally:
        app.config["WECHATPAY_APP_SECRET"] = fake_apis.WECHAT_APP_SECRET
    assert "jweixin" not in page and "data-config" not in page
    assert not [r for r in apis.requests if r.path.startswith("/cgi-bin/ticket")]


def test_the_favicon_exists_and_is_kept_a_day(client):
    with client.get("/favicon.ico") as response:
        assert response.status_code == 200
        assert response.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
        assert response.cache_control.max_age == 24 * 3600


def test_static_files_carry_their_version_and_are_kept_a_year(app, client, demo):
    page = client.get("/join/demo").text
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
    path, _, version = href.partition("?v=")
    assert path == "/static/app.css"
    with open(app.static_folder + "/app.css", "rb") as css:
        assert version == hashlib.sha256(css.read()).hexdigest()[:12]
    with client.get(href) as current:
        assert current.status_code == 200
        assert current.cache_control.max_age == VERSIONED_MAX_AGE
        assert current.cache_control.public and current.cache_control.immutable
    # An old version (or none) is served, but not kept for long.
    for stale in ("/static/app.css?v=000000000000", "/static/app.css"):
        with client.get(stale) as response:
            assert response.status_code == 200
            assert response.cache_control.max_age != VERSIONED_MAX_AGE
            assert not response.cache_control.immutable
