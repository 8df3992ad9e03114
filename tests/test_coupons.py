"""Coupons on the join page: the discount, its record in the ledger, every refusal, and a
use's life (reserved, consumed, released)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.limits import AttemptCounter
from membership.models import Application, Community, Member
from payments.models import LedgerEntry, Order, OrderStatus, Payment
from perks.models import CouponUse, CouponUseStatus
from tests.helpers import (
    PROSPECT,
    add_coupon,
    cashier_action,
    count,
    latest_code,
    open_join_form,
    prove_join,
    refund_in_full,
    submit_join,
)


def join_with(client, code: str, **fields):
    return submit_join(client, "main", coupon=code, **fields)


def test_a_percent_coupon_lowers_the_price_and_the_ledger_states_the_discount(app, client, demo):
    add_coupon(app, "VIP20", tiers=["main"])
    response = join_with(client, " vip20 ")  # read without spaces, in upper case
    assert response.status_code == 302
    assert cashier_action(client, response.location).status_code == 302
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        assert (order.list_amount, order.amount, order.coupon_code) == (9900, 7920, "VIP20")
        assert order.status is OrderStatus.PAID
        entry = db.session.scalar(sa.select(LedgerEntry))
        assert (entry.amount, entry.discount, entry.coupon_code) == (7920, 1980, "VIP20")
        use = db.session.scalar(sa.select(CouponUse))
        assert use.status is CouponUseStatus.CONSUMED
        actions = set(db.session.scalars(sa.select(AuditEntry.action)))
        assert {"order.discounted", "coupon.reserved", "coupon.consumed"} <= actions


def test_an_amount_off_larger_than_the_price_makes_it_free_never_negative(app, client, demo):
    add_coupon(app, "GIFT", percent_off=None, amount_off=20000)
    response = join_with(client, "GIFT")
    assert response.status_code == 302
    assert "/status/" in response.location  # no cashier: nothing to pay
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        assert (order.amount, order.status) == (0, OrderStatus.PAID)
        payment = db.session.scalar(sa.select(Payment))
        assert (payment.provider, payment.amount) == ("coupon", 0)
        entry = db.session.scalar(sa.select(LedgerEntry))
        assert (entry.amount, entry.discount) == (0, 9900)
        assert db.session.scalar(sa.select(Member.number)) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"code": "OTHER"}, "优惠码不存在"),
        ({"active": False}, "优惠码不存在"),
        ({"valid_until_days": -1}, "优惠券已过期"),
        ({"valid_from_days": 1}, "优惠券尚未生效"),
        ({"tiers": ["reentry"]}, "不适用于此商品"),
        ({"min_amount": 10000}, "满¥100.00可用"),
        ({"issued_only": True}, "仅限获赠的成员"),
    ],
)
def test_a_coupon_that_does_not_apply_is_refused_and_nothing_is_made(
    app, client, demo, fields, message
):
    fields = dict(fields)
    now = utcnow()
    if "valid_until_days" in fields:
        fields["valid_until"] = now + timedelta(days=fields.pop("valid_until_days"))
    if "valid_from_days" in fields:
        fields["valid_from"] = now + timedelta(days=fields.pop("valid_from_days"))
    code = fields.pop("code", "VIP20")
    add_coupon(app, "VIP20", **fields)
    response = join_with(client, code)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert count(Application) == count(Order) == count(CouponUse) == count(Payment) == 0


def test_one_buyer_cannot_use_a_coupon_twice_and_a_used_up_coupon_is_refused(app, client, demo):
    add_coupon(app, "ONCE", max_uses=2)
    first = join_with(client, "ONCE", contact_value="13700001111")
    assert first.status_code == 302
    # The same person again: told once they have proven the phone (a stranger typing it
    # is not told whether its owner used the coupon), the order at its full price.
    again = join_with(client, "ONCE", contact_value="13700001111")
    assert again.status_code == 302 and "/status/" in again.location
    assert "优惠码 ONCE 没能用上：你已使用过该优惠券" in client.get(again.location).text
    assert join_with(client, "ONCE").status_code == 302  # a second buyer: the last use
    exhausted = join_with(client, "ONCE")
    assert exhausted.status_code == 422
    assert "优惠券已被领完" in exhausted.get_data(as_text=True)
    with app.app_context():
        assert count(CouponUse) == 2 and count(Order) == 3


def test_a_reservation_is_released_when_its_order_expires(app, client, demo):
    add_coupon(app, "ONLY1", max_uses=1)
    assert join_with(client, "ONLY1").status_code == 302
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        order.expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
    assert join_with(client, "ONLY1").status_code == 302
    with app.app_context():
        statuses = db.session.scalars(sa.select(CouponUse.status).order_by(CouponUse.id)).all()
        assert statuses == [CouponUseStatus.RELEASED, CouponUseStatus.RESERVED]


@pytest.mark.parametrize("back_on_refund", [True, False])
def test_a_refund_gives_the_coupon_back_only_where_the_community_says(
    app, client, demo, back_on_refund
):
    add_coupon(app, "ONLY1", max_uses=1)
    with app.app_context():
        db.session.scalar(sa.select(Community)).coupons_back_on_refund = back_on_refund
        db.session.commit()
    response = join_with(client, "ONLY1")
    cashier_action(client, response.location)
    with app.app_context():
        refund_in_full(db.session.scalar(sa.select(Payment)), revoke_access=True)
        use = db.session.scalar(sa.select(CouponUse))
        expected = CouponUseStatus.RELEASED if back_on_refund else CouponUseStatus.CONSUMED
        assert use.status is expected
    second = join_with(client, "ONLY1")
    assert (second.status_code == 302) is back_on_refund


def test_guessing_codes_is_rate_limited_per_client(app, client, demo):
    add_coupon(app, "REAL")
    for attempt in range(10):
        assert join_with(client, f"GUESS{attempt}").status_code == 422
    blocked = join_with(client, "REAL")
    assert blocked.status_code == 422
    assert "尝试次数过多" in blocked.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(AttemptCounter, "coupon-try:client:127.0.0.1").count == 11
        assert db.session.get(AttemptCounter, "coupon-try:all:install").count == 11
        assert count(CouponUse) == 0  # the right code was not even looked up
        assert count(Order) == 0
        for counter in db.session.scalars(sa.select(AttemptCounter)):
            counter.window_start -= timedelta(minutes=16)
        db.session.commit()
    assert join_with(client, "REAL").status_code == 302  # the window has passed


def test_nothing_is_offered_for_refund_that_has_nothing_left_to_refund(app, demo, logged_in):
    """A free order's zero payment (named as the coupon that settled it), and a payment
    refunded in full: no refund link, no refund form, and no "surplus" notice."""
    add_coupon(app, "GIFT", percent_off=None, amount_off=20000)
    assert join_with(app.test_client(), "GIFT").status_code == 302
    add_coupon(app, "VIP20", tiers=["main"])
    browser = app.test_client()
    assert cashier_action(browser, join_with(browser, "VIP20").location).status_code == 302
    with app.app_context():
        paid = db.session.scalar(sa.select(Payment).where(Payment.provider == "fake"))
        paid_id = paid.id
    page = logged_in.get("/admin/payments/payments").text
    assert page.count("/refund") == 1 and f"/payments/{paid_id}/refund" in page
    assert "优惠券抵扣（无需付款）" in page and ">coupon<" not in page
    with app.app_context():
        free = db.session.scalar(sa.select(Payment.id).where(Payment.provider == "coupon"))
        refund_in_full(db.session.get(Payment, paid_id))
    page = logged_in.get("/admin/payments/payments").text
    assert "/refund" not in page and "已无可退金额" in page
    for payment_id in (free, paid_id):
        page = logged_in.get(f"/admin/payments/payments/{payment_id}/refund").text
        assert 'name="amount"' not in page and 'id="surplus"' not in page, payment_id


def test_an_unproven_application_holds_none_of_a_coupons_uses(app, client, demo):
    """Anyone may type anyone's phone: a one-use coupon typed with an application whose
    contact is never proven must not keep it from the next applicant. The code is checked
    at once, applied when the contact is proven, and refused then if it went meanwhile."""
    add_coupon(app, "ONLY1", max_uses=1)
    stranger = app.test_client()
    held = join_with(stranger, "ONLY1", prove=False)
    assert held.status_code == 302 and "/verify/" in held.location
    code = latest_code(app)
    page = stranger.get(held.location).get_data(as_text=True)
    assert "验证联系方式后，将为你使用优惠码 ONLY1。" in page
    with app.app_context():
        assert count(CouponUse) == 0
        assert db.session.scalar(sa.select(Order.amount)) == 9900
    # Someone else takes the one use, proving their contact.
    taken = join_with(client, "ONLY1")
    assert taken.status_code == 302 and "/fake-pay/" in taken.location
    # The stranger's proof comes late: the order stays at its price, and they are told.
    late = prove_join(stranger, held.location, code)
    assert late.status_code == 302 and "/status/" in late.location  # not the cashier
    page = stranger.get(late.location).get_data(as_text=True)
    assert "优惠码 ONLY1 没能用上：优惠券已被领完。订单按原价支付。" in page
    assert "去支付 ¥99.00" in page
    with app.app_context():
        amounts = db.session.execute(
            sa.select(Order.amount, Order.coupon_code).order_by(Order.id)
        ).all()
        assert amounts == [(9900, None), (7920, "ONLY1")]
        assert count(CouponUse) == 1
        refused = db.session.scalar(
            sa.select(AuditEntry).where(AuditEntry.action == "application.coupon_refused")
        )
        assert refused.data == {"code": "ONLY1"}


def test_a_strangers_unproven_application_uses_none_of_a_persons_own_limit(app, client, demo):
    """One use per person: a stranger typing someone's phone with the code takes none of
    that person's use."""
    add_coupon(app, "ONCE", max_uses=None)
    stranger = app.test_client()
    assert join_with(stranger, "ONCE", contact_value="13700002222", prove=False).status_code == 302
    own = join_with(client, "ONCE", contact_value="13700002222")
    assert own.status_code == 302 and "/fake-pay/" in own.location
    with app.app_context():
        assert db.session.scalars(sa.select(Order.amount).order_by(Order.id)).all() == [
            9900,
            7920,
        ]


def test_a_free_coupon_is_not_spent_until_the_contact_is_proven(app, client, demo):
    add_coupon(app, "GIFT", percent_off=None, amount_off=20000, max_uses=1)
    held = join_with(client, "GIFT", prove=False)
    with app.app_context():
        # Not settled: no zero payment, no use consumed, nobody admitted.
        assert count(Payment) == count(CouponUse) == count(Member) == 0
        assert db.session.scalar(sa.select(Order.status)) is OrderStatus.OPEN
    proven = prove_join(client, held.location)
    assert proven.status_code == 302 and "/status/" in proven.location
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        assert (order.amount, order.status, order.coupon_code) == (0, OrderStatus.PAID, "GIFT")
        assert db.session.scalar(sa.select(CouponUse.status)) is CouponUseStatus.CONSUMED
        assert db.session.scalar(sa.select(Member.number)) == 1


def test_a_price_check_does_not_tell_a_stranger_whether_a_phone_used_a_coupon(app, client, demo):
    """Whether a phone has used a coupon says whether its owner bought here: a price check
    without a proven contact is not told (the reservation, after the proof, is)."""
    add_coupon(app, "ONCE", max_uses=None)
    assert join_with(client, "ONCE", contact_value="13700003333").status_code == 302
    stranger = app.test_client()
    data = {**open_join_form(stranger), **PROSPECT, "contact_value": "13700003333"}
    checked = stranger.post("/join/demo/main/price", data=data | {"coupon": "ONCE"})
    assert checked.status_code == 200
    assert "你已使用过该优惠券" not in checked.text and "已优惠 ¥19.80" in checked.text
