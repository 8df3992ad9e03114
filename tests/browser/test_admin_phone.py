"""The admin on a phone, in a real headless Chromium at 360×640 with WeChat's user agent:
the members list, the applications to review, the orders, the team, the payment accounts
and the outgoing webhooks, in Chinese and in English.
The menu folds away, tables become cards, nothing scrolls sideways, and axe-core finds no
serious or critical accessibility violation. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from core.auth import create_staff_user
from core.clock import utcnow
from core.db import db
from core.events import WebhookEndpoint
from membership.models import Community, QuestionKind, ScreeningQuestion, Tier
from tests.browser.test_h5_journey import (  # noqa: F401
    browser,
    fits_the_screen,
    live_server,
    phone,
    shot,
)
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD

#: The words each page is checked for, by locale.
WORDS = {
    "zh_CN": {
        "menu": "菜单",
        "login": "登录",
        "members": "成员",
        "review": "待审核申请",
        "orders": "订单",
        "approve": "通过",
        "paid": "已付款",
        "contact": "联系方式",
    },
    "en": {
        "menu": "Menu",
        "login": "Log in",
        "members": "Members",
        "review": "Applications to review",
        "orders": "Orders",
        "approve": "Approve",
        "paid": "Paid",
        "contact": "Contact",
    },
}


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{violation['id']}: {violation['help']} "
        f"{[node['target'] for node in violation['nodes']]} "
        f"{[node['failureSummary'] for node in violation['nodes']][:2]}"
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def check(page: Page, name: str) -> None:
    """What every admin page on a phone must hold; then its screenshot."""
    assert fits_the_screen(page), f"{name} scrolls sideways"
    assert serious_violations(page) == [], name
    shot(page, name)


def prepare(server) -> int:
    """A staff owner, a screened tier with one paid member and one applicant waiting."""
    with server.app.app_context():
        create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
        create_staff_user("moderator@example.com", "组委", ADMIN_PASSWORD, actor="test")
        community = db.session.scalar(sa.select(Community))
        db.session.add(
            ScreeningQuestion(
                community=community, position=0, prompt="为什么想加入？", kind=QuestionKind.TEXT
            )
        )
        db.session.commit()
        return community.id


def join(page: Page, server, name: str, phone_number: str) -> None:
    """A prospect joins the ¥99 tier and pays at the fake cashier."""
    page.goto(f"{server}/join/demo/main")
    page.fill("#display_name", name)
    page.fill("#wechat_id", "reader_" + phone_number[-4:])
    page.check("input[name=contact_kind][value=phone]")
    page.fill("#contact_value", phone_number)
    page.check("#accept_rules")
    for answer in page.locator("textarea[name^=q_], input[name^=q_]").all():
        answer.fill("想一起读书")
    page.locator("form button[type=submit]:not([formaction])").first.click()
    page.wait_for_url("**/verify/**")
    page.fill("#code", server.latest_code())
    page.locator("form button[type=submit]:not([formaction])").first.click()
    page.wait_for_load_state()
    if "/fake-pay/" in page.url:
        page.locator("input#pay").click()
        page.wait_for_url("**/status/**")


@pytest.mark.committing
@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_the_admin_on_a_phone(live_server, browser, locale):  # noqa: F811
    community_id = prepare(live_server)
    join(phone(browser), live_server, "读书人小王", "13800138000")
    with live_server.app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).requires_screening = True
        db.session.commit()
    join(phone(browser), live_server, "申请人小李", "13900139000")

    words = WORDS[locale]
    page = phone(browser)
    page.goto(f"{live_server}/lang/{locale}?next=/admin/login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.get_by_role("button", name=words["login"]).click()

    page.goto(f"{live_server}/admin/communities/{community_id}/members")
    # The menu is folded away: its links are hidden until the toggle is tapped.
    menu = page.locator("#admin-menu")
    expect(menu).to_be_hidden()
    toggle = page.locator("label.menu-label")
    expect(toggle).to_have_text(words["menu"])
    assert toggle.bounding_box()["height"] >= 44
    toggle.click()
    expect(menu).to_be_visible()
    shot(page, f"admin-{locale}-01-menu-open")
    toggle.click()
    expect(page.locator("h1")).to_contain_text(words["members"])
    # Each member is a card whose cells say what they are.
    row = page.locator("#members tr").nth(1)
    expect(row.locator(f'td[data-label="{words["contact"]}"]')).to_be_visible()
    assert row.bounding_box()["width"] <= 360
    check(page, f"admin-{locale}-02-members")

    page.goto(f"{live_server}/admin/communities/{community_id}/applications")
    expect(page.locator("h1")).to_contain_text(words["review"])
    approve = page.locator(".application .review-actions button").first
    expect(approve).to_have_text(words["approve"])
    assert approve.bounding_box()["height"] >= 44
    check(page, f"admin-{locale}-03-applications")
    approve.click()
    expect(page.locator(".application")).to_have_count(0)

    page.goto(f"{live_server}/admin/payments/orders")
    expect(page.locator("h1")).to_contain_text(words["orders"])
    expect(page.locator('#orders [data-status="paid"]').first).to_have_text(words["paid"])
    check(page, f"admin-{locale}-04-orders")

    # The team: another member's roles, a select per community, as wide as a thumb needs.
    page.goto(f"{live_server}/admin/staff")
    select = page.locator("#team select").first
    expect(select).to_be_visible()
    assert select.bounding_box()["width"] >= 120
    check(page, f"admin-{locale}-05-team")

    # Pages with long addresses: the community's payment accounts (the URLs to give the
    # providers) and its outgoing webhooks (an endpoint's URL).
    with live_server.app.app_context():
        db.session.add(
            WebhookEndpoint(
                community_id=community_id,
                url="https://hooks.example-bookclub-community.cn/qunmen/events/receive-all",
                secret="s" * 32,
                event_types=[],
                created_at=utcnow(),
            )
        )
        db.session.commit()
    page.goto(f"{live_server}/admin/payments/accounts/{community_id}")
    check(page, f"admin-{locale}-06-payment-accounts")
    page.goto(f"{live_server}/admin/communities/{community_id}/webhooks")
    check(page, f"admin-{locale}-07-webhooks")
