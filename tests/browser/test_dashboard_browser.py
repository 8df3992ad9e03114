"""The admin dashboard in a real headless Chromium at 360×640 with WeChat's user agent, in
both languages: nothing scrolls sideways, the charts are drawn, and axe-core finds no
serious or critical accessibility violation. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from core.auth import create_staff_user
from core.clock import utcnow
from core.db import db
from payments.models import LedgerEntry, Payment
from tests.browser.test_h5_journey import browser, fits_the_screen, live_server, phone, shot

__all__ = ["browser", "live_server"]  # the journey's fixtures, used here too
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, join_and_pay


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/admin/login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.locator("form button[type=submit]").click()
    page.wait_for_url(f"{base}/admin/")


def _serious(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page, with where they are."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.committing
def test_the_dashboard_on_a_phone_in_both_languages(live_server, browser):
    app = live_server.app
    with app.app_context():
        create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
        db.session.commit()
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).order_by(Payment.id))
        db.session.add(
            LedgerEntry(
                created_at=utcnow(),
                kind="payment",
                amount=2500,
                currency="USD",
                order_id=payment.order_id,
                payment_id=payment.id,
                provider=payment.provider,
            )
        )
        db.session.commit()
    page = phone(browser)
    _log_in(page, live_server)
    for locale, revenue, paying in (
        ("zh_CN", "收入", "付费成员"),
        ("en", "Revenue", "Paying members"),
    ):
        page.goto(f"{live_server}/lang/{locale}?next=/admin/?days=7")
        expect(page.locator("#kpi-paying .kpi-label")).to_have_text(paying)
        expect(page.locator("#kpi-paying .kpi-value")).to_have_text("2")
        expect(page.locator("h2").filter(has_text=revenue).first).to_be_visible()
        for currency in ("CNY", "USD"):
            chart = page.locator(f"#revenue-chart-{currency}")
            expect(chart).to_be_visible()
            assert chart.bounding_box()["width"] <= 360
        assert page.locator("#revenue-chart-CNY rect").count() == 7
        assert fits_the_screen(page)
        for link in page.locator("nav.choices a").all():
            assert link.bounding_box()["height"] >= 44, link.text_content()
        shot(page, f"admin-dashboard-{locale}")
        assert _serious(page) == []
