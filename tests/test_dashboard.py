"""The admin's view at a glance: revenue chart, members by tier, funnel, what needs care."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from core.clock import utcnow
from core.db import db
from membership import visits
from membership.models import Community, PageVisits
from payments.models import InboxStatus, WebhookEvent
from tests.helpers import count, join_and_pay, submit_join


def test_community_page_shows_revenue_members_and_funnel(app, demo, logged_in):
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    submit_join(app.test_client(), "main")  # applied, never paid
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    page = logged_in.get(f"/admin/communities/{community_id}").text
    assert "近30天收入 · Revenue, last 30 days: 198.00 CNY" in page
    heights = [
        float(h) for h in re.findall(r'<rect x="\d+" y="[\d.]+" width="8" height="([\d.]+)"', page)
    ]
    assert len(heights) == 30
    assert heights[-1] == 100.0  # today is the tallest bar
    assert sum(1 for h in heights if h > 0) == 1
    assert "访问 visits 0 → 申请 applications 3 → 下单 orders 3 → 付款 paid 2" in page
    assert re.search(r"<td>正式成员</td><td>active</td><td>2</td>", page)


def test_join_page_visits_open_the_funnel_written_in_batches(app, demo, logged_in):
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    app.config["VISIT_FLUSH_SECONDS"] = 3600
    try:
        for _ in range(3):
            assert app.test_client().get("/join/demo").status_code == 200
        with app.app_context():
            assert count(PageVisits) == 0  # held in the process, no write per visit
        app.config["VISIT_FLUSH_SECONDS"] = 0
        app.test_client().get("/join/demo")
    finally:
        app.config["VISIT_FLUSH_SECONDS"] = 0
    join_and_pay(app.test_client(), "main")
    page = logged_in.get(f"/admin/communities/{community_id}").text
    assert "访问 visits 4 → 申请 applications 1 → 下单 orders 1 → 付款 paid 1" in page


def test_dashboard_flags_what_needs_attention(app, demo, logged_in):
    assert 'id="attention"' not in logged_in.get("/admin/").text
    with app.app_context():
        db.session.add(
            WebhookEvent(
                provider="fake",
                received_at=utcnow(),
                headers={},
                body=b"{}",
                status=InboxStatus.FAILED,
                detail="boom",
            )
        )
        db.session.commit()
    page = logged_in.get("/admin/").text
    assert 'id="attention"' in page
    assert "1 条支付通知处理失败" in page


def test_a_failed_visit_write_never_fails_the_page_and_keeps_the_counts(app, demo, monkeypatch):
    def broken(_batch):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(visits, "_add", broken)
    assert app.test_client().get("/join/demo").status_code == 200
    monkeypatch.undo()
    assert app.test_client().get("/join/demo").status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(PageVisits.visits)) == 2
