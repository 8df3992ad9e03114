"""Renewal as 知识星球 does it: prices by band (before the end, within the grace days after
it, later), the renew window, the days left and why a membership ended, on /me. Times are
given with ``now=``, never slept through."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from membership.lifecycle import RenewalRefused, end_by_hand, expire_memberships, start_renewal
from membership.models import Membership, MembershipStatus, Tier
from membership.renewal import RenewalBand, band_at, renewal_price
from membership.services import end_membership
from payments.models import LedgerEntry, Order, OrderStatus
from payments.providers import Payer
from payments.services import start_payment
from tests.helpers import (
    hidden_value,
    join_and_pay,
    log_in,
    log_in_member,
    new_phone,
    signed_notification,
    submit_form,
)


@pytest.fixture
def banded(app, demo):
    """The main tier: 30 days, renewed at ¥50.00 base: 80 % before the end, 100 % within
    7 days after it, 120 % later."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days, tier.renewal_price = 30, 5000
        tier.renewal_early_percent, tier.renewal_grace_percent = 80, 100
        tier.renewal_late_percent, tier.renewal_grace_days = 120, 7
        db.session.commit()


def member_browser(app):
    """A new member of the main tier, logged in on a client of their own."""
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=phone)
    browser = app.test_client()
    log_in_member(app, browser, phone)
    return browser


def the_membership() -> Membership:
    return db.session.scalars(sa.select(Membership).order_by(Membership.id.desc())).first()


def test_the_band_is_early_before_the_end_grace_from_the_end_and_late_from_end_plus_n(app, banded):
    member_browser(app)
    with app.app_context():
        membership = the_membership()
        end = membership.ends_at
        second = timedelta(seconds=1)
        expected = [
            (end - second, RenewalBand.EARLY, 4000),
            (end, RenewalBand.GRACE, 5000),  # exactly at the end: it has ended
            (end + timedelta(days=7) - second, RenewalBand.GRACE, 5000),
            (end + timedelta(days=7), RenewalBand.LATE, 6000),  # exactly at end + N days
        ]
        for now, band, price in expected:
            assert band_at(membership, now) is band, now
            assert renewal_price(membership, now).price.amount == price
        membership.tier.renewal_grace_days = 0  # no grace days: the end itself is late
        assert band_at(membership, end) is RenewalBand.LATE
        assert band_at(membership, end - second) is RenewalBand.EARLY


def test_defaults_keep_the_renewal_price_in_every_band(app, demo):
    member_browser(app)
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days = 30
        membership = the_membership()
        membership.ends_at = utcnow() + timedelta(days=30)
        end = membership.ends_at
        for now in (end - timedelta(days=1), end + timedelta(days=99)):
            assert renewal_price(membership, now).price == tier.price_money


@pytest.mark.parametrize(
    ("after_end", "band", "amount"),
    [(timedelta(days=-1), "early", 4000), (timedelta(days=3), "grace", 5000),
     (timedelta(days=8), "late", 6000)],
)  # fmt: skip
def test_the_order_is_made_at_the_band_of_the_moment_it_is_made(
    app, banded, after_end, band, amount
):
    member_browser(app)
    with app.app_context():
        membership = the_membership()
        now = membership.ends_at + after_end
        if now >= membership.ends_at:
            expire_memberships(now=now)
        renewal = start_renewal(membership, now=now)
        order = db.session.get(Order, renewal.order_id)
        assert (order.amount, order.list_amount) == (amount, amount)
        db.session.commit()


def test_rounding_is_money_percent_s(app, banded):
    member_browser(app)
    with app.app_context():
        membership = the_membership()
        membership.tier.renewal_price, membership.tier.renewal_early_percent = 9999, 85
        renewal = start_renewal(membership, now=membership.ends_at - timedelta(days=1))
        # 9999 × 85 % = 8499.15: rounded down to the fen, as Money.percent does.
        assert db.session.get(Order, renewal.order_id).amount == 8499


def test_an_order_opened_early_and_paid_after_the_end_keeps_its_price(app, client, banded):
    member_browser(app)
    with app.app_context():
        membership = the_membership()
        renewal = start_renewal(membership, now=membership.ends_at - timedelta(days=2))
        order = db.session.get(Order, renewal.order_id)
        payment = start_payment(
            order,
            "fake",
            payer=Payer(),
            return_url="http://qunmen.test/",
            cancel_url="http://qunmen.test/",
            actor="member",
        )
        # The term runs out before the payment arrives: the late band would cost ¥60.00.
        membership.ends_at = utcnow() - timedelta(days=30)
        expire_memberships(now=utcnow())
        db.session.commit()
        body, headers = signed_notification(payment)
        order_id = order.id
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    with app.app_context():
        order = db.session.get(Order, order_id)
        assert (order.status, order.amount) == (OrderStatus.PAID, 4000)
        assert (
            db.session.scalar(sa.select(LedgerEntry.amount).where(LedgerEntry.order_id == order.id))
            == 4000
        )
        assert the_membership().status is MembershipStatus.ACTIVE


def test_the_renew_button_appears_within_the_window_not_a_year_early(app, banded):
    browser = member_browser(app)
    with app.app_context():
        membership = the_membership()
        membership.ends_at = utcnow() + timedelta(days=365)
        db.session.commit()
        membership_id = membership.id
    page = browser.get("/me").text
    assert f"/me/renew/{membership_id}" not in page
    assert f'id="renewal-opens-{membership_id}"' in page
    assert "起可续费" in page
    # Asked anyway, the server refuses and makes nothing.
    response = browser.post(
        f"/me/renew/{membership_id}",
        data={"csrf_token": hidden_value(page, "csrf_token"), "provider": "fake"},
    )
    assert response.status_code == 302
    assert "起可续费" in browser.get("/me").text
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 1
        membership = db.session.get(Membership, membership_id)
        with pytest.raises(RenewalRefused):
            start_renewal(membership, now=membership.ends_at - timedelta(days=31))
        assert start_renewal(membership, now=membership.ends_at - timedelta(days=30))
        db.session.rollback()
        membership = db.session.get(Membership, membership_id)
        membership.ends_at = utcnow() + timedelta(days=12, hours=1)
        db.session.commit()
    page = browser.get("/me").text
    assert f'action="/me/renew/{membership_id}"' in page
    assert re.search(r'data-days-left="12"[^>]*>\s*还剩 12 天', page)
    assert "续费 ¥40.00" in page  # the early band's price
    assert "比原价省 ¥10.00" in page
    assert "比原价多 ¥10.00" in page  # the late band costs more
    assert "还剩 12 天" not in browser.get("/lang/en?next=/me", follow_redirects=True).text
    english = browser.get("/me").text
    assert "12 days left" in english
    assert "¥10.00 less than the base price" in english


#: How the system ends a membership: its status, the reason it gives, who does it.
_ENDED_BY = {
    "purged": (MembershipStatus.PURGED, "purge", "staff:1"),  # a purge an admin ran
    "refunded": (MembershipStatus.ENDED, "refunded", "system"),
    "disputed": (MembershipStatus.SUSPENDED, "disputed", "system"),
    "dispute_lost": (MembershipStatus.ENDED, "dispute_lost", "system"),
}


def _end(how: str, membership: Membership) -> None:
    now = utcnow()
    if how == "expired":
        membership.ends_at = now - timedelta(days=1)
        expire_memberships(now=now)
    elif how == "by_admin":
        end_by_hand(membership, reason="在群里发广告", actor="staff:1", now=now)
    else:
        status, reason, actor = _ENDED_BY[how]
        end_membership(membership, status, reason=reason, actor=actor, now=now)


@pytest.mark.parametrize(
    ("how", "says", "can"),
    [
        ("expired", "到期", "仍可续费"),
        ("purged", "清理不活跃成员时被清退", "成员编号保留不变"),
        ("refunded", "该笔付款已退款", "请联系社群管理员"),
        ("disputed", "正在银行争议中", "请联系社群管理员"),
        ("dispute_lost", "银行已撤回该笔付款", "请联系社群管理员"),
        ("by_admin", "管理员于", "原因：在群里发广告"),
    ],
)
def test_an_ended_membership_says_why_and_what_the_member_can_do(app, banded, how, says, can):
    browser = member_browser(app)
    with app.app_context():
        membership = the_membership()
        membership_id = membership.id
        _end(how, membership)
        db.session.commit()
    page = browser.get("/me").text
    ending = re.search(rf'<div class="ending" id="ending-{membership_id}"(.*?)</div>', page, re.S)
    assert ending, page
    assert f'data-ending="{how}"' in ending.group(0)
    assert says in ending.group(1)
    assert can in ending.group(1)
    # Only a term that ran out is renewed (in the grace band now); the others are not.
    renewable = f'action="/me/renew/{membership_id}"' in page
    assert renewable is (how == "expired")
    if how == "expired":
        assert "续费 ¥50.00" in page


def test_a_renewal_of_an_expired_membership_restores_it_at_the_grace_price(app, banded):
    browser = member_browser(app)
    with app.app_context():
        membership = the_membership()
        membership.ends_at = utcnow() - timedelta(days=2)
        expire_memberships(now=utcnow())
        db.session.commit()
        membership_id = membership.id
    page = browser.get("/me").text
    response = browser.post(
        f"/me/renew/{membership_id}",
        data={"csrf_token": hidden_value(page, "csrf_token"), "provider": "fake"},
    )
    assert response.location.startswith("/fake-pay/")
    with app.app_context():
        order = db.session.scalars(sa.select(Order).order_by(Order.id.desc())).first()
        assert order.amount == 5000


def test_the_tier_form_sets_the_bands_and_refuses_bad_ones(app, demo, admin, client):
    assert log_in(client).status_code == 302
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier_id = tier.id
    url = f"/admin/tiers/{tier_id}/edit"
    form = {
        "code": "main",
        "name": "正式成员",
        "kind": "paid",
        "price": "99",
        "renewal_price": "50",
        "duration_days": "30",
        "audience": "everyone",
        "active": "y",
        "sort_order": "0",
        "renewal_early_percent": "80",
        "renewal_grace_days": "7",
        "renewal_grace_percent": "100",
        "renewal_late_percent": "120",
        "renewal_window_days": "14",
    }
    refused = submit_form(client, url, form | {"renewal_late_percent": "0"})
    assert refused.status_code == 200  # the form again, with the error
    assert 'id="renewal_late_percent-errors"' in refused.text
    with app.app_context():
        assert db.session.get(Tier, tier_id).renewal_late_percent == 100
    assert submit_form(client, url, form).status_code == 302
    with app.app_context():
        tier = db.session.get(Tier, tier_id)
        assert (
            tier.renewal_early_percent,
            tier.renewal_grace_days,
            tier.renewal_grace_percent,
            tier.renewal_late_percent,
            tier.renewal_window_days,
        ) == (80, 7, 100, 120, 14)
