"""The H5 pages in a real headless Chromium (Debian's), at a phone's size with WeChat's
user agent: join page, form errors, the code step that proves the phone, the fake
cashier, the member page with its QR code, and a screened application waiting in the lobby.
A screenshot of each step goes to test-output/screenshots/."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from playwright.sync_api import Page, expect, sync_playwright
from werkzeug.serving import make_server

from core.db import db
from core.outbox import OutboxMessage
from membership.cli import seed_demo_community
from membership.models import QuestionKind, ScreeningQuestion
from perks.cli import DEMO_COUPON, seed_demo_perks
from tests.conftest import fresh_database

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
WECHAT_UA = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/116.0 Mobile Safari/537.36 MicroMessenger/8.0.47.2560(0x28002F35) "
    "WeChat/arm64 NetType/WIFI Language/zh_CN"
)
#: Chromium's own calls home are refused on this closed network; keep it quiet.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class LiveServer(str):
    """The server's base URL, with the app behind it (to read what it sent)."""

    app: Flask

    def latest_code(self) -> str:
        """The code in the latest message sent (the member reads it on their phone)."""
        with self.app.app_context():
            body = db.session.scalar(
                sa.select(OutboxMessage.body).order_by(OutboxMessage.id.desc())
            )
        return re.search(r"\b(\d{6})\b", body).group(1)


def prove_the_phone(page: Page, code_of, screenshot: str | None = None) -> None:
    """The join's code step: type the code the join sent to the phone."""
    expect(page.locator("h1")).to_have_text("验证联系方式")
    page.fill("#code", code_of())
    if screenshot:
        assert fits_the_screen(page)
        shot(page, screenshot)
    page.get_by_role("button", name="验证并继续").click()


def log_in_with_code(page: Page, phone_number: str, code_of) -> None:
    """On the member login page: ask for a code to ``phone_number`` and type it."""
    page.check("input[name=contact_kind][value=phone]")
    page.fill("#contact_value", phone_number)
    page.get_by_role("button", name="获取验证码").click()
    page.fill("#code", code_of())
    page.get_by_role("button", name="登录", exact=True).click()


@pytest.fixture
def live_server(tmp_path, _api_server):
    """The app, with the demo community and only the fake provider, on a loopback port."""
    with fresh_database(tmp_path, _api_server, SERVER_NAME=None, PAYMENT_PROVIDERS=["fake"]) as app:
        with app.app_context():
            seed_demo_community()
            seed_demo_perks()
            db.session.commit()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        # The port is known only now; the links the app sends out must point at it.
        app.config["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = LiveServer(f"http://127.0.0.1:{server.server_port}")
        url.app = app
        try:
            yield url
        finally:
            server.shutdown()


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: bin/test installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def phone(browser) -> Page:
    context = browser.new_context(
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        user_agent=WECHAT_UA,
        locale="zh-CN",
    )
    return context.new_page()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def fits_the_screen(page: Page) -> bool:
    """No sideways scrolling at 360 px: the page is no wider than the layout viewport
    (``clientWidth``). Not ``window.innerWidth``: a phone zooms out to show a page wider
    than it, and ``innerWidth`` grows with the page (649 px for a 649 px page)."""
    return page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


@pytest.mark.committing
def test_join_journey_on_a_phone(live_server, browser):
    page = phone(browser)
    page.goto(f"{live_server}/join/demo")
    expect(page.locator("h1")).to_have_text("群门读书会")
    expect(page.locator("#tier-main .price")).to_have_text("¥99.00")
    assert fits_the_screen(page)
    shot(page, "01-join-page")

    page.locator("#tier-main a.button").click()
    expect(page.locator("h1")).to_have_text("正式成员")
    shot(page, "02-join-form")

    page.get_by_role("button", name="去支付 ¥99.00").click()
    expect(page.locator("[role=alert]")).to_contain_text("请修改下面标红的内容")
    expect(page.locator("#display_name-errors")).to_contain_text("必填")
    expect(page.locator("#accept_rules-errors")).to_contain_text("请阅读并同意群规")
    assert fits_the_screen(page)
    shot(page, "03-form-errors")

    page.fill("#display_name", "读书人小王")
    page.fill("#wechat_id", "wang_reader88")
    page.check("input[name=contact_kind][value=phone]")
    page.fill("#contact_value", "13800138000")
    page.check("#accept_rules")
    page.get_by_role("button", name="去支付 ¥99.00").click()
    prove_the_phone(page, live_server.latest_code, "03b-prove-the-phone")
    expect(page.locator(".price")).to_have_text("¥99.00")
    shot(page, "04-fake-cashier")

    page.get_by_role("button", name="确认支付").click()
    expect(page.locator("#member-number")).to_have_text("0001")
    qr = page.locator("img.qr")
    expect(qr).to_be_visible()
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0")
    assert fits_the_screen(page)
    shot(page, "05-member-number-and-qr")

    # Coming back later takes a code to the phone: the contact typed becomes proven.
    status_url = page.url
    page.locator("#login-later a").click()
    log_in_with_code(page, "13800138000", live_server.latest_code)
    expect(page.locator("#member-number")).to_have_text("0001")
    page.goto(status_url)
    member_link = page.locator("#member-link").inner_text().strip()
    other = phone(browser)
    other.goto(f"{live_server}/me")
    expect(other.locator("h1")).to_contain_text("请先登录")
    other.goto(member_link)
    expect(other.locator("#member-number")).to_have_text("0001")
    expect(other.locator("img.qr")).to_be_visible()
    shot(other, "06-member-page")


@pytest.mark.committing
def test_failed_payment_and_retry_on_a_phone(live_server, browser):
    page = phone(browser)
    page.goto(f"{live_server}/join/demo/main")
    page.fill("#display_name", "小李")
    page.check("input[name=contact_kind][value=phone]")
    page.fill("#contact_value", "13800138000")
    page.check("#accept_rules")
    page.get_by_role("button", name="去支付 ¥99.00").click()
    prove_the_phone(page, live_server.latest_code)
    page.get_by_role("button", name="模拟失败").click()
    expect(page.locator("[role=alert]")).to_contain_text("支付失败")
    shot(page, "07-payment-failed")
    page.get_by_role("button", name="重新支付 ¥99.00").click()
    page.get_by_role("button", name="确认支付").click()
    expect(page.locator("#member-number")).to_have_text("0001")


@pytest.fixture
def screened_server(tmp_path, _api_server):
    """The demo with the ¥99 tier screened by two questions."""
    with fresh_database(tmp_path, _api_server, SERVER_NAME=None, PAYMENT_PROVIDERS=["fake"]) as app:
        with app.app_context():
            community = seed_demo_community()
            db.session.flush()
            next(t for t in community.tiers if t.code == "main").requires_screening = True
            db.session.add_all(
                [
                    ScreeningQuestion(
                        community=community,
                        position=0,
                        prompt="为什么想加入？",
                        kind=QuestionKind.TEXT,
                    ),
                    ScreeningQuestion(
                        community=community,
                        position=1,
                        prompt="从哪里知道我们？",
                        kind=QuestionKind.SINGLE,
                        choices="朋友推荐\n公众号",
                    ),
                ]
            )
            db.session.commit()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        # The port is known only now; the links the app sends out must point at it.
        app.config["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = LiveServer(f"http://127.0.0.1:{server.server_port}")
        url.app = app
        try:
            yield url
        finally:
            server.shutdown()


@pytest.mark.committing
def test_lobby_application_on_a_phone(screened_server, browser):
    page = phone(browser)
    page.goto(f"{screened_server}/join/demo/main")
    expect(page.get_by_text("为什么想加入？")).to_be_visible()
    page.fill("#display_name", "申请人小赵")
    page.fill("#wechat_id", "zhao_reader1")
    page.fill("#contact_value", "13700137000")
    page.get_by_role("button", name="提交申请").click()
    expect(page.locator("#display_name-errors")).to_have_count(0)
    expect(page.locator("[role=alert]")).to_contain_text("请修改下面标红的内容")  # no answers
    shot(page, "08-screening-errors")
    page.fill("textarea", "想和大家一起读书")
    page.get_by_label("朋友推荐").check()
    page.check("#accept_rules")
    page.get_by_role("button", name="提交申请").click()
    prove_the_phone(page, screened_server.latest_code)
    expect(page.locator("#review-status")).to_contain_text("等待管理员审核")
    expect(page.locator("img.qr")).to_be_visible()  # the lobby group, at once
    assert fits_the_screen(page)
    shot(page, "09-waiting-in-the-lobby")


@pytest.mark.committing
def test_a_coupon_perks_and_a_course_offer_on_a_phone(live_server, browser):
    page = phone(browser)
    page.goto(f"{live_server}/join/demo/main")
    page.fill("#display_name", "小张")
    page.check("input[name=contact_kind][value=phone]")
    page.fill("#contact_value", "13900139000")
    page.check("#accept_rules")
    page.fill("#coupon", "NOPE")
    page.get_by_role("button", name="去支付 ¥99.00").click()
    expect(page.locator("#coupon-errors")).to_contain_text("优惠码不存在")
    assert fits_the_screen(page)
    shot(page, "10-coupon-refused")

    page.check("#accept_rules")
    page.fill("#coupon", DEMO_COUPON.lower())
    page.get_by_role("button", name="去支付 ¥99.00").click()
    prove_the_phone(page, live_server.latest_code)
    expect(page.locator(".price")).to_have_text("¥89.10")
    shot(page, "11-cashier-with-coupon")

    page.get_by_role("button", name="确认支付").click()
    expect(page.locator("#member-number")).to_have_text("0001")
    expect(page.locator("#upsells")).to_contain_text("省¥39.80")
    shot(page, "12-paid-with-upsell")

    page.goto(f"{live_server}/me")
    page.get_by_role("link", name="用手机号或邮箱接收验证码").click()
    log_in_with_code(page, "13900139000", live_server.latest_code)
    voucher = page.locator(".perk.eligible", has_text="读书券")
    expect(voucher).to_contain_text("剩余 20")
    expect(page.locator(".perk.not-eligible", has_text="元老礼包")).to_contain_text("入群满180天")
    assert fits_the_screen(page)
    shot(page, "13-member-perks")
    voucher.get_by_role("button", name="领取").click()
    expect(page.locator(".flash")).to_contain_text("已领取")
    expect(page.locator("#redemptions")).to_contain_text("读书券")
    shot(page, "14-perk-redeemed")

    page.locator("#upsells a").first.click()
    expect(page.locator("#course-price")).to_have_text("¥159.20")
    page.get_by_role("button", name="购买").click()
    page.get_by_role("button", name="确认支付").click()
    expect(page.locator("#course-link")).to_be_visible()
    shot(page, "15-course-bought")


@pytest.mark.committing
def test_long_addresses_and_names_wrap_on_a_phone(live_server, browser):
    """An ordinary long e-mail address on the code page and a long Latin nickname on the
    member's page break where they must: nothing scrolls sideways at 360 px."""
    page = phone(browser)
    page.goto(f"{live_server}/join/demo/main")
    page.fill("#display_name", "W" * 40)
    page.check("input[name=contact_kind][value=email]")
    page.fill("#contact_value", "zhangxiaoming.bookclub2024@foxmail.com")
    page.check("#accept_rules")
    page.get_by_role("button", name="去支付 ¥99.00").click()
    expect(page.locator("#code-sent")).to_contain_text("zhangxiaoming.bookclub2024@foxmail.com")
    assert fits_the_screen(page), "the code page scrolls sideways"
    prove_the_phone(page, live_server.latest_code)
    page.get_by_role("button", name="确认支付").click()
    expect(page.locator("#group-nickname")).to_contain_text("0001-" + "W" * 40)
    assert fits_the_screen(page), "the member's page scrolls sideways"
