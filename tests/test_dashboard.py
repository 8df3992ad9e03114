"""The admin's view at a glance: KPI cards against the previous period, revenue per
currency, members joined and ended, renewals due, seats, the funnel, what needs care;
and the community page's chart."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from bench.seed import seed_members
from core.charts import bar_chart
from core.clock import utcnow
from core.db import db
from core.events import Event
from core.security import new_token
from membership import visits
from membership.dashboard import Change, dashboard_figures
from membership.models import (
    Community,
    ContactKind,
    Member,
    Membership,
    MembershipStatus,
    PageVisits,
    Tier,
)
from membership.services import submit_application
from payments.models import InboxStatus, LedgerEntry, Order, Payment, WebhookEvent
from payments.providers import Payer
from payments.services import start_payment
from tests.helpers import add_communities, count, join_and_pay, statements, submit_join


def test_community_page_shows_revenue_members_and_funnel(app, demo, logged_in):
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    submit_join(app.test_client(), "main")  # applied, never paid
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    page = logged_in.get(f"/admin/communities/{community_id}").text
    assert re.search(r'id="revenue"><span class="muted">近30天收入</span><strong>¥198.00<', page)
    heights = [
        float(h) for h in re.findall(r'<rect x="\d+" y="[\d.]+" width="8" height="([\d.]+)"', page)
    ]
    assert len(heights) == 30
    assert heights[-1] == 100.0  # today is the tallest bar
    assert sum(1 for h in heights if h > 0) == 1
    assert "报名漏斗（30天）：访问 0 → 申请 3 → 下单 3 → 付款 2" in page
    assert re.search(
        r'<td data-label="档位">正式成员</td>'
        r'<td data-label="状态" data-status="active">有效</td><td data-label="成员">2</td>',
        page,
    )


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
    assert "报名漏斗（30天）：访问 4 → 申请 1 → 下单 1 → 付款 1" in page


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
    logged_in.get("/lang/en")
    assert "1 failed webhook delivery" in logged_in.get("/admin/").text


def test_a_failed_visit_write_never_fails_the_page_and_keeps_the_counts(app, demo, monkeypatch):
    def broken(_batch):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(visits, "_add", broken)
    assert app.test_client().get("/join/demo").status_code == 200
    monkeypatch.undo()
    assert app.test_client().get("/join/demo").status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(PageVisits.visits)) == 2


#: The dashboard's clock in the figures test: 2026-12-02 10:00 in Shanghai.
NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)


def _movement(payment: Payment, when: datetime, amount: int, currency: str, kind="payment"):
    db.session.add(
        LedgerEntry(
            created_at=when,
            kind=kind,
            amount=amount,
            currency=currency,
            order_id=payment.order_id,
            payment_id=payment.id,
            provider=payment.provider,
        )
    )


def _member(community: Community, tier: Tier, n: int, starts: datetime, **membership):
    member = Member(
        community_id=community.id,
        display_name=f"成员{n}",
        contact_kind=ContactKind.PHONE,
        contact_value=f"1380000{n:04d}",
        number=n,
        number_label=f"{n:04d}",
        created_at=starts,
    )
    values = {"status": MembershipStatus.ACTIVE, "ends_at": None, **membership}
    db.session.add(Membership(member=member, tier=tier, starts_at=starts, **values))
    return member


def _ended(community: Community, when: datetime, status: str = "expired") -> None:
    db.session.add(
        Event(
            public_id=f"evt_{when.timestamp()}_{status}",
            community_id=community.id,
            type="membership.ended",
            data={"status": status},
            created_at=when,
        )
    )


def _applied_and_paying(tier: Tier, when: datetime) -> Payment:
    """Someone applied to ``tier`` at ``when`` and started paying then (app context)."""
    application = submit_application(
        tier,
        display_name="成员0",
        contact_kind=ContactKind.WECHAT,
        contact_value="wx_member000000",
        submission_key=new_token(24),
        now=when,
    )
    return start_payment(
        db.session.get(Order, application.order_id),
        "fake",
        payer=Payer(),
        return_url="http://qunmen.test/",
        cancel_url="http://qunmen.test/",
        actor="prospect",
        now=when,
    )


def test_figures_of_a_known_week_against_the_week_before(app, demo):
    """Seven days to 2026-12-02 (Shanghai) against the seven before: revenue per currency
    and per local day (a payment at 17:00 UTC counts on the next Shanghai day), members
    joined and ended, the paying members then and now, renewals due, the funnel."""
    day = timedelta(days=1)
    with app.app_context():
        community = db.session.get(Community, demo.id)
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payment = _applied_and_paying(tier, NOW - day)
        _movement(payment, NOW - day, 9900, "CNY")  # this week, 12-01
        _movement(payment, datetime(2026, 11, 30, 17, tzinfo=UTC), 9900, "CNY")  # 12-01 01:00
        _movement(payment, NOW - day, -2000, "CNY", kind="refund")
        _movement(payment, NOW - 2 * day, 2500, "USD")  # never added to yuan
        _movement(payment, NOW - 10 * day, 9900, "CNY")  # the week before
        _movement(payment, NOW - 20 * day, 5000, "CNY")  # before both
        for n in (1, 2, 3):
            _member(community, tier, n, NOW - 3 * day)  # joined this week
        _member(community, tier, 4, NOW - 9 * day)  # joined the week before
        _member(community, tier, 5, NOW - 40 * day, ends_at=NOW + 5 * day)  # renewal due
        _member(community, tier, 6, NOW - 40 * day, ends_at=NOW + 40 * day)  # not yet
        _ended(community, NOW - day)
        _ended(community, NOW - 2 * day, "purged")
        _ended(community, NOW - 2 * day, "suspended")  # a dispute: not ended
        _ended(community, NOW - 8 * day)
        db.session.add(PageVisits(community_id=community.id, day=date(2026, 12, 1), visits=40))
        db.session.add(PageVisits(community_id=community.id, day=date(2026, 11, 20), visits=7))
        db.session.commit()
        figures = dashboard_figures(community, 7, now=NOW)
        groups = [group.name for group in community.groups]
    assert figures.period.first == date(2026, 11, 26)
    assert figures.revenue == {"CNY": Change(17800, 9900), "USD": Change(2500, 0)}
    assert figures.revenue_by_day == {
        "CNY": {"2026-12-01": 17800},
        "USD": {"2026-11-30": 2500},
    }
    assert figures.new == Change(3, 1)
    assert figures.new.percent == 200
    assert figures.ended == Change(2, 1)
    assert figures.ended_by_day == {"2026-12-01": 1, "2026-11-30": 1}
    # Six paying now (the open payment's applicant has no membership); a week ago six
    # less the three who joined, plus the two who left since.
    assert figures.paying == Change(6, 5)
    assert figures.renewals_by_day == {"2026-12-07": 1}
    assert figures.funnel == (40, 1, 1, 0)
    assert figures.seats == [(name, 0, 500) for name in groups]


def test_the_dashboard_shows_cards_charts_and_each_currency_apart(app, demo, logged_in):
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).order_by(Payment.id))
        _movement(payment, utcnow(), 2500, "USD")
        db.session.commit()
    page = logged_in.get("/admin/?days=7").text
    assert re.search(r'id="kpi-paying" data-current="2" data-previous="0"', page)
    assert re.search(r'id="kpi-revenue-CNY" data-current="19800" data-previous="0"', page)
    assert re.search(r'id="kpi-revenue-USD" data-current="2500"', page)
    assert "¥198.00" in page and "$25.00" in page
    assert "较前7天 +2" in page
    # One chart per currency, each with its own axis; values written as text.
    for currency, top in (("CNY", "¥200.00"), ("USD", "$25.00")):
        chart = re.search(rf'<svg[^>]*id="revenue-chart-{currency}".*?</svg>', page, re.S)[0]
        assert 'role="img"' in chart and "<title" in chart
        assert '<text class="tick"' in chart and top in chart
        assert len(re.findall(r"<rect class=\"series-0\"", chart)) == 7
    assert 'data-funnel="0,2,2,2"' in page
    assert 'id="flow-chart"' in page and 'id="renewals-chart"' in page
    assert "各群已用席位" in page
    logged_in.get("/lang/en")
    english = logged_in.get("/admin/?days=30&by=week").text
    assert "Paying members" in english and "+2 vs previous 30 days" in english
    assert 'data-by="week"' in english
    assert "Net revenue in USD: $25.00" in english


def _dashboard_statements(app, client) -> int:
    with statements(app) as seen:
        assert client.get("/admin/?days=90&by=month").status_code == 200
    return len(seen)


def test_the_dashboard_costs_the_same_statements_for_5_or_300_members(app, demo, logged_in):
    """Every figure is an aggregate: no statement per member, payment or day."""
    statements = []
    for size in (5, 300):
        with app.app_context():
            # The seeding numbers from 1 again: the members before move out of its way.
            db.session.execute(
                sa.update(Member).values(
                    number=Member.number + 10_000, contact_value=Member.contact_value + "0"
                )
            )
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            seed_members(db.session.get(Community, demo.id), tier, size, now=utcnow(), paid=True)
            db.session.commit()
        statements.append(_dashboard_statements(app, logged_in))
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(LedgerEntry.id))) == 305
        assert logged_in.get("/admin/").text.count('id="kpi-paying" data-current="305"') == 1
    assert statements[0] == statements[1], statements


def test_the_dashboard_costs_the_same_statements_for_more_communities_and_tiers(
    app, demo, logged_in
):
    """The group warnings read every community's groups and tiers: in one statement each,
    not one per community or per tier."""
    before = _dashboard_statements(app, logged_in)
    with app.app_context():
        add_communities(2, tiers=3, group_each_tier=True)
    assert "别的社群1" in logged_in.get("/admin/").text  # the person sees them all
    assert _dashboard_statements(app, logged_in) == before


def test_visits_held_in_the_process_are_written_when_no_visit_comes_after(app, demo):
    """Two visits, then none: a timer writes them within ``VISIT_FLUSH_SECONDS``, not the
    next visit (which may come tomorrow, or never)."""
    app.config["VISIT_FLUSH_SECONDS"] = 0.3
    try:
        visits.init_visits(app)  # a counter that wrote just now: the next visits are held
        for _ in range(2):
            assert app.test_client().get("/join/demo").status_code == 200
        written = None
        for _ in range(50):
            with app.app_context():
                written = db.session.scalar(sa.select(sa.func.sum(PageVisits.visits)))
            if written:
                break
            time.sleep(0.1)
    finally:
        app.config["VISIT_FLUSH_SECONDS"] = 0
    assert written == 2


def test_a_charts_text_is_escaped_in_its_markup():
    """Categories, series names, values and titles are text (a group's name, an amount):
    written into the SVG escaped, never as markup."""
    chart = bar_chart(["<b>日</b>"], [[3]], text=lambda v: f"{v} & more", titles=['"x"'])
    svg = str(chart.svg("标题 <script>", 'id"x'))
    assert "<script>" not in svg and "<b>" not in svg
    assert "标题 &lt;script&gt;" in svg and 'id="id&#34;x"' in svg
    assert 'data-value="3 &amp; more"' in svg
    assert "<title>&lt;b&gt;日&lt;/b&gt; &#34;x&#34;: 3 &amp; more</title>" in svg
    assert svg.count("<rect ") == 1 and svg.startswith("<svg ") and svg.endswith("</svg>")
