"""The admin's view at a glance: revenue chart, members by tier, funnel, what needs care."""

from __future__ import annotations

import re

import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from membership.models import Community
from payments.models import InboxStatus, WebhookEvent
from tests.helpers import join_and_pay, submit_join


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
    assert "申请 applications 3 → 下单 orders 3 → 付款 paid 2" in page
    assert re.search(r"<td>正式成员 · Member</td><td>active</td><td>2</td>", page)


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
