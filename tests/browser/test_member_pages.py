"""Every page of the prospect's and member's side in a real headless Chromium at 360×640
with WeChat's user agent, in each language: the whole journey (join → the code step →
the fake cashier → the success page → log in → /me → an invitation, a course, the
unsubscribe page, an error page), each page checked with axe-core (no serious or critical
violations), screenshotted into test-output/screenshots/, and measured: the join page's
requests and bytes, the success page's and /me's heights (test-output/page-heights.json)."""

from __future__ import annotations

import json
import re

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from core.db import db
from core.security import sign
from membership.models import Application, Community, Member
from perks.models import Coupon, Course, Offer, Perk
from tests.browser import test_h5_journey
from tests.browser.test_h5_journey import CHROMIUM_ARGS, SCREENSHOTS, WECHAT_UA, fits_the_screen

#: The fixtures of the H5 journey: the demo on a loopback port, and Debian's Chromium.
live_server = test_h5_journey.live_server
browser = test_h5_journey.browser
assert CHROMIUM_ARGS  # the same browser, launched the same way

#: What a reader sees on each page, by language: (the code step's button, pay, the
#: cashier's confirm, the login's send button, the login's button).
WORDS = {
    "zh_CN": {
        "prove": "验证并继续",
        "pay": "去支付 ¥99.00",
        "price": "¥99.00",
        "confirm": "确认支付",
        "send": "获取验证码",
        "log_in": "登录",
        "steps": ["扫码或长按识别二维码入群", "修改群昵称", "二维码过期或群已满怎么办"],
    },
    "en": {
        "prove": "Prove and go on",
        "pay": "Pay CN¥99.00",
        "price": "CN¥99.00",
        "confirm": "Confirm the payment",
        "send": "Send me a code",
        "log_in": "Log in",
        "steps": [
            "Scan or long-press the QR code to join the group",
            "Set your group nickname",
            "If the code has expired or the group is full",
        ],
    },
}
HEIGHTS = SCREENSHOTS.parent / "page-heights.json"
HAN = re.compile(r"[\u4e00-\u9fff]")


def phone_in(browser, locale: str) -> Page:
    """A phone in WeChat whose browser asks for ``locale``."""
    context = browser.new_context(
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        user_agent=WECHAT_UA,
        locale="zh-CN" if locale == "zh_CN" else "en-US",
    )
    return context.new_page()


def check(page: Page, server, locale: str, name: str) -> None:
    """The page fits 360 px, speaks ``locale`` only, passes axe-core with no serious or
    critical violation, and is screenshotted."""
    assert fits_the_screen(page), name
    assert page.locator("html").get_attribute("lang") == locale.replace("_", "-"), name
    if locale == "en":
        interface = interface_text(page, operator_content(server.app))
        assert not HAN.search(interface), (name, HAN.findall(interface)[:20], interface[:800])
    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, (name, bad)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"member-{locale}-{name}.png", full_page=True)


def operator_content(app) -> list[str]:
    """What the operator wrote (the demo's is Chinese, whatever the page's language):
    names, pitch, rules, tier lines, groups, perks, coupons, offers, courses, and the
    members' own nicknames; longest first, each line apart."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        pieces = [community.name, community.pitch, community.rules]
        pieces += [t.name for t in community.tiers]
        pieces += [line for t in community.tiers for line in t.include_lines]
        pieces += [g.name for g in community.groups]
        pieces += db.session.scalars(sa.select(Member.display_name)).all()
        pieces += db.session.scalars(sa.select(Application.display_name)).all()
        for model, columns in ((Perk, ("name", "description")), (Coupon, ("description",))):
            for row in db.session.scalars(sa.select(model)):
                pieces += [getattr(row, column) for column in columns]
        pieces += db.session.scalars(sa.select(Offer.name)).all()
        for course in db.session.scalars(sa.select(Course)):
            pieces += [course.title, course.description]
    lines = {line.strip() for piece in pieces if piece for line in piece.splitlines()}
    return sorted(filter(None, lines), key=len, reverse=True)


def interface_text(page: Page, content: list[str]) -> str:
    """The text of the page without the operator's ``content`` it quotes, nor scripts."""
    text = page.evaluate(
        """() => {
          const clone = document.querySelector('main').cloneNode(true);
          clone.querySelectorAll('script').forEach(node => node.remove());
          return clone.textContent;
        }"""
    )
    for piece in content:
        text = text.replace(piece, "")
    return text


def height(page: Page) -> int:
    return page.evaluate("document.documentElement.scrollHeight")


def record_height(name: str, pixels: int) -> None:
    HEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    heights = json.loads(HEIGHTS.read_text()) if HEIGHTS.exists() else {}
    heights[name] = pixels
    HEIGHTS.write_text(json.dumps(heights, indent=2, sort_keys=True))


def latest_code(server) -> str:
    return server.latest_code()


@pytest.mark.committing
@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_every_member_page_on_a_phone(live_server, browser, locale):
    words = WORDS[locale]
    page = phone_in(browser, locale)
    page.goto(f"{live_server}/lang/{locale}?next=/join/demo")
    expect(page.locator("h1")).to_have_text("群门读书会")
    check(page, live_server, locale, "01-community")

    page.locator("#tier-main a.button").click()
    check(page, live_server, locale, "02-join-form")
    page.get_by_role("button", name=words["pay"]).click()
    expect(page.locator("[role=alert]")).to_be_visible()
    check(page, live_server, locale, "03-form-errors")

    page.fill("#display_name", "小王")
    page.fill("#wechat_id", "wang_reader88")
    page.fill("#contact_value", "13800138000")
    page.check("#accept_rules")
    page.get_by_role("button", name=words["pay"]).click()
    expect(page.locator("#code-sent")).to_be_visible()
    check(page, live_server, locale, "04-code-step")
    page.fill("#code", latest_code(live_server))
    page.get_by_role("button", name=words["prove"]).click()
    expect(page.locator(".price")).to_have_text(words["price"])
    check(page, live_server, locale, "05-cashier")

    page.get_by_role("button", name=words["confirm"]).click()
    expect(page.locator("#member-number")).to_have_text("0001")
    steps = page.locator("#next-steps > li > h2")
    expect(steps).to_have_count(4)
    for index, step in enumerate(words["steps"]):
        expect(steps.nth(index)).to_have_text(step)
    expect(page.locator("#group-nickname")).to_have_text("0001-小王")
    expect(page.locator("img.qr")).to_have_count(1)
    check(page, live_server, locale, "06-success")
    record_height(f"success-{locale}", height(page))

    page.locator("#login-later a").click()
    check(page, live_server, locale, "07-login")
    page.fill("#contact_value", "13800138000")
    page.get_by_role("button", name=words["send"]).click()
    expect(page.locator("#code")).to_have_attribute("autocomplete", "one-time-code")
    check(page, live_server, locale, "08-login-code")
    page.fill("#code", latest_code(live_server))
    page.get_by_role("button", name=words["log_in"], exact=True).click()
    expect(page).to_have_url(f"{live_server}/me")
    expect(page.locator("#member-number")).to_have_text("0001")
    check(page, live_server, locale, "09-me")
    record_height(f"me-{locale}", height(page))

    page.locator(".invitation a.standalone").first.click()
    expect(page.locator("img.qr")).to_be_visible()
    check(page, live_server, locale, "10-invitation")

    page.goto(f"{live_server}/me")
    page.locator("#upsells a").first.click()
    expect(page.locator("#course-price")).to_be_visible()
    check(page, live_server, locale, "11-course")

    with live_server.app.app_context():
        token = sign("unsubscribe", db.session.scalar(sa.select(Member.id)))
    page.goto(f"{live_server}/unsubscribe/{token}")
    check(page, live_server, locale, "12-unsubscribe")
    page.locator("main form button").click()
    expect(page.locator("#unsubscribed")).to_be_visible()
    check(page, live_server, locale, "13-unsubscribed")

    page.goto(f"{live_server}/join/demo/nope")
    check(page, live_server, locale, "14-not-found")

    stranger = phone_in(browser, locale)
    stranger.goto(f"{live_server}/lang/{locale}?next=/me")
    expect(stranger.locator("#login-demo")).to_be_visible()
    check(stranger, live_server, locale, "15-me-logged-out")


def loaded_by_the_join_page(browser, server) -> dict[str, int]:
    """What a phone in WeChat loads for the join page the first time: bytes by URL."""
    page = test_h5_journey.phone(browser)
    loaded = []
    page.on("requestfinished", lambda request: loaded.append(request))
    page.goto(f"{server}/join/demo", wait_until="networkidle")
    sizes = {}
    for request in loaded:
        size = request.sizes()
        sizes[request.url] = size["responseBodySize"] + size["responseHeadersSize"]
    page.context.close()
    return sizes


@pytest.mark.committing
def test_the_join_page_stays_within_3_requests_and_15_kb(live_server, browser):
    """The page, its stylesheet, its icon; nothing from another site. With an official
    account configured, WeChat's JS-SDK (ours, same site) and the share settings come on
    top, inside WeChat only."""
    app = live_server.app
    secret, app.config["WECHATPAY_APP_SECRET"] = app.config["WECHATPAY_APP_SECRET"], None
    try:
        plain = loaded_by_the_join_page(browser, live_server)
    finally:
        app.config["WECHATPAY_APP_SECRET"] = secret
    assert all(url.startswith(live_server) for url in plain), plain
    assert len(plain) <= 3, plain
    assert sum(plain.values()) <= 15 * 1024, plain
    record_height("join-page-requests", len(plain))
    record_height("join-page-bytes", sum(plain.values()))
    sharing = loaded_by_the_join_page(browser, live_server)
    assert all(url.startswith(live_server) for url in sharing), sharing
    added = sorted(url.split("?")[0].rsplit("/", 1)[1] for url in set(sharing) - set(plain))
    assert added == ["jweixin-1.6.5.js", "wechat-share.js"], sharing
