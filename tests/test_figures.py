"""The daily figures the dashboard reads: kept by the session hooks in the transaction of
each payment, refund, admission and end; recomputed from the source rows by the check,
the rebuild command, the migration and a change of time zone; counted once by parallel
deliveries on real connections."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import flask_migrate
import pytest
import requests
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from membership import figures
from membership.cli import seed_demo_community
from membership.dashboard import dashboard_figures
from membership.figures import FIELDS, DailyFigures
from membership.lifecycle import expire_memberships
from membership.models import Community, Membership, MembershipStatus, Tier, TierKind
from membership.services import end_membership
from payments.models import LedgerEntry, Payment
from payments.services import request_refund, send_refund
from tests.conftest import fresh_database
from tests.helpers import join_and_pay, open_payment, pay_through_inbox, signed_notification
from tests.test_concurrency import _serve


def _kept(community_id: int) -> dict[str, int]:
    """The community's figures summed over every day, currency and slot."""
    sums = db.session.execute(
        sa.select(
            *[sa.func.coalesce(sa.func.sum(getattr(DailyFigures, f)), 0) for f in FIELDS]
        ).where(DailyFigures.community_id == community_id)
    ).one()
    return dict(zip(FIELDS, map(int, sums), strict=True))


def _revenue(community_id: int) -> dict[str, int]:
    rows = db.session.execute(
        sa.select(DailyFigures.currency, sa.func.sum(DailyFigures.revenue))
        .where(DailyFigures.community_id == community_id, DailyFigures.currency != "")
        .group_by(DailyFigures.currency)
    )
    return {currency: int(total) for currency, total in rows}


def test_payments_refunds_and_ends_move_the_figures_as_they_happen(app, demo):
    pay_through_inbox(app, 3)
    with app.app_context():
        assert _kept(demo.id) | {"revenue": 0} == {
            "revenue": 0,
            "joined": 3,
            "ended": 0,
            "applications": 3,
            "orders": 3,
            "paid": 3,
            "paying": 3,
        }
        assert _revenue(demo.id) == {"CNY": 3 * 9900}
        payment = db.session.scalars(sa.select(Payment).order_by(Payment.id)).first()
        refund = request_refund(
            payment, payment.money, reason="test", revoke_access=True, actor="staff:1"
        )
        db.session.commit()
        send_refund(refund, actor="staff:1")
    with app.app_context():
        # The refund is a negative movement; its membership ended; the funnel keeps the
        # payer (they paid).
        assert _revenue(demo.id) == {"CNY": 2 * 9900}
        kept = _kept(demo.id)
        assert (kept["joined"], kept["ended"], kept["paid"], kept["paying"]) == (3, 1, 3, 2)
        membership = db.session.scalars(
            sa.select(Membership).where(Membership.status == MembershipStatus.ACTIVE)
        ).first()
        end_membership(
            membership, MembershipStatus.SUSPENDED, reason="disputed", actor="system", now=utcnow()
        )
        db.session.commit()
        # A suspension (an open chargeback) is no end and keeps the member's access pending.
        assert (_kept(demo.id)["ended"], _kept(demo.id)["paying"]) == (1, 2)
        end_membership(
            membership, MembershipStatus.ENDED, reason="dispute_lost", actor="system", now=utcnow()
        )
        db.session.commit()
        assert (_kept(demo.id)["ended"], _kept(demo.id)["paying"]) == (2, 1)
        community = db.session.get(Community, demo.id)
        shown = dashboard_figures(community, 7, now=utcnow())
    assert shown.revenue["CNY"].current == 2 * 9900
    assert (shown.paying.current, shown.new.current, shown.ended.current) == (1, 3, 2)
    assert shown.funnel == (0, 3, 3, 3)


def test_a_rollback_leaves_the_figures_as_they_were(app, demo):
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        open_payment(tier, "fake", 1)
        db.session.rollback()
        assert _kept(demo.id)["applications"] == 0
        open_payment(tier, "fake", 2)
        db.session.commit()
        assert _kept(demo.id)["applications"] == 1


def test_a_term_run_out_stops_counting_before_and_after_the_sweep(app, demo):
    payments = pay_through_inbox(app, 2)
    now = utcnow()
    with app.app_context():
        membership = db.session.scalar(
            sa.select(Membership).where(Membership.order_id == payments[0].order_id)
        )
        membership.ends_at = now + timedelta(days=3)
        db.session.commit()
        community = db.session.get(Community, demo.id)
        later = now + timedelta(days=4)
        # Its term ran out and no worker swept it yet: the rows still count it by its
        # status, the dashboard does not.
        assert _kept(demo.id)["paying"] == 2
        assert dashboard_figures(community, 7, now=later).paying.current == 1
        assert dashboard_figures(community, 7, now=now).paying.current == 2
        assert dashboard_figures(community, 7, now=now).renewals_by_day != {}
        assert expire_memberships(now=later) == 1
        db.session.commit()
        assert _kept(demo.id)["paying"] == 1
        assert dashboard_figures(community, 7, now=later).paying.current == 1


def test_days_are_the_community_s_and_move_with_its_time_zone(app, demo):
    """A payment at 20:00 UTC is on the next day in Shanghai; the community moving to UTC
    recomputes its days at that commit."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payment = open_payment(tier, "fake", 1)
        db.session.flush()
        evening = datetime(2026, 11, 30, 20, tzinfo=UTC)
        entry = LedgerEntry(
            created_at=evening,
            kind="payment",
            amount=500,
            currency="USD",
            order_id=payment.order_id,
            payment_id=payment.id,
            provider="fake",
        )
        db.session.add(entry)
        db.session.commit()

        def usd_days():
            return db.session.scalars(
                sa.select(DailyFigures.day).where(DailyFigures.currency == "USD")
            ).all()

        assert usd_days() == [date(2026, 12, 1)]
        community = db.session.get(Community, demo.id)
        community.time_zone = "UTC"
        db.session.commit()
        assert usd_days() == [date(2026, 11, 30)]
        community.time_zone = "Asia/Shanghai"
        db.session.commit()


def test_a_tier_made_free_no_longer_counts_its_members_as_paying(app, demo):
    pay_through_inbox(app, 2)
    with app.app_context():
        assert (_kept(demo.id)["joined"], _kept(demo.id)["paying"]) == (2, 2)
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.kind, tier.price = TierKind.FREE, 0
        db.session.commit()
        assert (_kept(demo.id)["joined"], _kept(demo.id)["paying"]) == (0, 0)
        assert _revenue(demo.id) == {"CNY": 2 * 9900}  # the money came all the same


def test_the_check_finds_figures_that_disagree_and_the_rebuild_puts_them_right(app, demo, runner):
    join_and_pay(app.test_client())
    with app.app_context():
        assert list(figures.disagreements(db.session)) == []
        day = date(2026, 1, 1)
        for currency, figure in (("CNY", {"revenue": 1}), ("", {"paying": 5})):
            db.session.add(
                DailyFigures(community_id=demo.id, day=day, currency=currency, slot=0, **figure)
            )
        db.session.commit()
        found = list(figures.disagreements(db.session))
    assert len(found) == 2, found
    assert "2026-01-01 CNY: revenue is 1 in the daily figures, 0 in the source rows" in found[0]
    assert "count 6 paying members, the memberships 1" in found[1]
    result = runner.invoke(args=["figures-rebuild", "--community", "demo"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert list(figures.disagreements(db.session)) == []
        assert _revenue(demo.id) == {"CNY": 9900}
    assert runner.invoke(args=["figures-rebuild", "--community", "nope"]).exit_code == 1


@pytest.mark.committing
def test_the_migration_fills_the_figures_from_the_rows_there_are(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        payments = pay_through_inbox(app, 3)
        with app.app_context():
            payment = db.session.get(Payment, payments[0].id)
            refund = request_refund(
                payment, payment.money, reason="test", revoke_access=True, actor="staff:1"
            )
            db.session.commit()
            send_refund(refund, actor="staff:1")
        with app.app_context():
            before = figures.kept(db.session)
            assert before
            db.session.rollback()
            flask_migrate.downgrade(revision="b8c7d6e5f4a3")
            flask_migrate.upgrade()
            assert figures.kept(db.session) == before
            assert list(figures.disagreements(db.session)) == []
            db.session.rollback()


PARALLEL = 30


@pytest.mark.committing
def test_parallel_deliveries_of_one_community_and_day_are_all_counted(tmp_path, _api_server):
    """Thirty payments delivered at once over real connections: every one counted in the
    day's figures (PostgreSQL: spread over slots, none lost to a race)."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            community = seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            payments = [open_payment(tier, "fake", i) for i in range(PARALLEL)]
            db.session.commit()
            deliveries = [signed_notification(payment) for payment in payments]
            community_id = community.id
        server, base = _serve(app)
        start = threading.Barrier(PARALLEL)

        def post(delivery):
            body, headers = delivery
            start.wait()
            return requests.post(
                f"{base}/webhooks/fake",
                data=body,
                headers={**headers, "Host": "qunmen.test"},
                timeout=60,
            ).status_code

        try:
            with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
                answers = list(pool.map(post, deliveries))
        finally:
            server.shutdown()
        assert answers == [200] * PARALLEL
        with app.app_context():
            kept = _kept(community_id)
            assert _revenue(community_id) == {"CNY": PARALLEL * 9900}
            assert (kept["joined"], kept["paid"], kept["paying"]) == (PARALLEL,) * 3
            assert list(figures.disagreements(db.session)) == []
