"""The price before paying: the "check price" button on the join form, the renewal on /me
and a course page shows what the coupon typed takes off, checked by the server with the
order's own rules; it creates nothing and counts as a coupon try."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.limits import AttemptCounter
from core.money import Money
from membership.lifecycle import expire_memberships
from membership.models import Application, Membership, Tier
from payments.discounts import CODE_TRIES_PER_CLIENT
from payments.models import Order, OrderStatus, Payment
from perks.models import Coupon, CouponUse, Course
from tests.helpers import (
    PROSPECT,
    add_coupon,
    count,
    csrf_token,
    hidden_value,
    join_and_pay,
    log_in_member,
    new_phone,
    open_join_form,
    submit_form,
    submit_join,
)
from tests.test_perks import add, make_course, member_client


def price_shown(html: str) -> dict[str, int]:
    """The price check's answer in a page, by its data attributes (minor units)."""
    match = re.search(
        r'id="price-check"[^>]*data-list-price="(\d+)" data-discount="(\d+)" data-price="(\d+)"',
        html,
    )
    assert match, "no price check in the page"
    return dict(zip(("list", "discount", "price"), map(int, match.groups()), strict=True))


def nothing_made(app) -> None:
    with app.app_context():
        assert count(Application) == count(Order) == count(CouponUse) == count(Payment) == 0


def tries_counted(app) -> int:
    with app.app_context():
        counter = db.session.get(AttemptCounter, "coupon-try:client:127.0.0.1")
        return counter.count if counter else 0


def check_join_price(client, code: str, **fields):
    """Press "check price" on the join form with ``code`` typed (and nothing else but the
    contact, unless ``fields`` say otherwise)."""
    data = {**open_join_form(client), "contact_kind": "phone", "coupon": code, **fields}
    return client.post("/join/demo/main/price", data=data)


def test_the_join_form_shows_the_price_with_the_coupon_and_creates_nothing(app, client, demo):
    add_coupon(app, "VIP20", tiers=["main"])
    response = check_join_price(client, " vip20 ", display_name="小王")
    assert response.status_code == 200
    html = response.text
    assert price_shown(html) == {"list": 9900, "discount": 1980, "price": 7920}
    assert "已优惠 ¥19.80，实付 ¥79.20" in html
    assert "去支付 ¥79.20</button>" in html  # the button says what paying charges
    assert 'value=" vip20 "' in html or 'value="vip20"' in html  # kept as typed
    assert 'value="小王"' in html  # the rest of the form too
    assert 'action="/join/demo/main"' in html  # paying goes on from here
    nothing_made(app)
    assert tries_counted(app) == 1
    # The order the form then makes (the contact proven) charges what was shown.
    submit_join(client, coupon="vip20")
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        assert (order.list_amount, order.amount) == (9900, 7920)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"code": "NOPE"}, "优惠码不存在"),
        ({"min_amount": 10000}, "满¥100.00可用"),
        ({"valid_until": "past"}, "优惠券已过期"),
        ({"tiers": ["reentry"]}, "不适用于此商品"),
    ],
)
def test_a_refused_code_stays_in_its_field_with_the_reason_and_the_full_price(
    app, client, demo, fields, message
):
    fields = dict(fields)
    code = fields.pop("code", "VIP20")
    if fields.get("valid_until") == "past":
        fields["valid_until"] = utcnow() - timedelta(days=1)
    add_coupon(app, "VIP20", **fields)
    response = check_join_price(client, code)
    assert response.status_code == 422
    html = response.text
    field = re.search(r'<input[^>]*name="coupon"[^>]*>', html).group(0)
    assert f'value="{code}"' in field
    assert 'aria-invalid="true"' in field
    errors = re.search(r'<ul class="errors" id="coupon-errors">(.*?)</ul>', html, re.S).group(1)
    assert message in errors
    assert price_shown(html) == {"list": 9900, "discount": 0, "price": 9900}
    assert "实付 ¥99.00" in html
    nothing_made(app)
    assert tries_counted(app) == 1


def test_the_refusal_speaks_the_reader_s_language(app, client, demo):
    add_coupon(app, "VIP20", min_amount=10000)
    client.get("/lang/en")
    html = check_join_price(client, "VIP20").text
    assert "For orders of CN¥100.00 or more" in html
    assert "You pay CN¥99.00" in html


def test_price_checks_count_against_the_coupon_try_limit(app, client, demo):
    add_coupon(app, "VIP20")
    for attempt in range(CODE_TRIES_PER_CLIENT.tries):
        assert check_join_price(client, f"WRONG{attempt}").status_code == 422
    # The limit is reached: even the right code is not looked up now.
    html = check_join_price(client, "VIP20").text
    assert "优惠码尝试次数过多" in html
    assert price_shown(html)["price"] == 9900
    assert tries_counted(app) == CODE_TRIES_PER_CLIENT.tries + 1
    nothing_made(app)
    # And the order path sees the same counter: it refuses too.
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone(), "coupon": "VIP20"}
    assert "优惠码尝试次数过多" in client.post("/join/demo/main", data=data).text


def test_no_code_shows_the_list_price_and_counts_nothing(app, client, demo):
    html = check_join_price(client, "").text
    assert price_shown(html) == {"list": 9900, "discount": 0, "price": 9900}
    assert tries_counted(app) == 0


@pytest.fixture
def banded(app, demo):
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days, tier.renewal_price = 30, 5000
        tier.renewal_early_percent, tier.renewal_grace_percent = 80, 100
        tier.renewal_late_percent, tier.renewal_grace_days = 120, 7
        db.session.commit()


@pytest.mark.parametrize(
    ("after_end", "price", "discounted"),
    [(None, 4000, 3600), (timedelta(days=2), 5000, 4500), (timedelta(days=10), 6000, 5400)],
)
@pytest.mark.parametrize("code", ["", "RENEW10"])
def test_the_renewal_price_check_equals_what_the_order_charges(
    app, banded, after_end, price, discounted, code
):
    """In each band, with and without a coupon: the price shown is the renewal's order."""
    add_coupon(app, "RENEW10", percent_off=10, tiers=["main"])
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=phone)
    browser = app.test_client()
    log_in_member(app, browser, phone)
    with app.app_context():
        membership = db.session.scalar(sa.select(Membership))
        if after_end is not None:  # the term ran out that long ago
            membership.ends_at = utcnow() - after_end
            expire_memberships(now=utcnow())
        db.session.commit()
        membership_id, orders_before = membership.id, count(Order)
    page = browser.get("/me").text
    token = hidden_value(page, "csrf_token")
    form = {"csrf_token": token, "provider": "fake", "coupon": code}
    checked = browser.post(f"/me/renew/{membership_id}/price", data=form)
    assert checked.status_code == 200
    shown = price_shown(checked.text)
    assert shown["price"] == (discounted if code else price)
    button = re.search(rf'id="renew-{membership_id}">([^<]+)<', checked.text).group(1)
    assert button.endswith(str(Money(shown["price"], "CNY")))
    assert re.search(rf'id="coupon-{membership_id}"[^>]*value="{code}"', checked.text)
    with app.app_context():
        assert count(Order) == orders_before and count(CouponUse) == 0
    to_cashier = browser.post(f"/me/renew/{membership_id}", data=form)
    assert to_cashier.location.startswith("/fake-pay/")
    with app.app_context():
        order = db.session.scalars(sa.select(Order).order_by(Order.id.desc())).first()
        assert (order.list_amount, order.amount) == (price, shown["price"])


def test_the_renewal_price_check_keeps_a_refused_code_beside_its_field(app, banded):
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=phone)
    browser = app.test_client()
    log_in_member(app, browser, phone)
    with app.app_context():
        membership_id = db.session.scalar(sa.select(Membership.id))
    token = hidden_value(browser.get("/me").text, "csrf_token")
    checked = browser.post(
        f"/me/renew/{membership_id}/price",
        data={"csrf_token": token, "provider": "fake", "coupon": "NOPE"},
    )
    assert checked.status_code == 422
    assert re.search(rf'id="coupon-{membership_id}"[^>]*value="NOPE"', checked.text)
    assert "优惠码不存在" in checked.text
    assert price_shown(checked.text)["price"] == 4000


def test_the_course_price_check_equals_what_the_order_charges(app, demo):
    client, _ = member_client(app)
    course_id = make_course(app)
    coupon = Coupon(code="WRITE30", percent_off=30, currency="CNY")
    add(app, coupon)
    with app.app_context():
        db.session.merge(coupon).courses = [db.session.get(Course, course_id)]
        db.session.commit()
        orders_before = count(Order)
    token = csrf_token(client, "/courses/demo/writing")
    checked = client.post(
        "/courses/demo/writing/price",
        data={"csrf_token": token, "provider": "fake", "coupon": "write30"},
    )
    assert checked.status_code == 200
    assert price_shown(checked.text) == {"list": 19900, "discount": 5970, "price": 13930}
    assert "已优惠 ¥59.70，实付 ¥139.30" in checked.text
    assert 'action="/courses/demo/writing"' in checked.text
    with app.app_context():
        assert count(Order) == orders_before and count(CouponUse) == 0
    bought = submit_form(
        client,
        "/courses/demo/writing",
        {"provider": "fake", "coupon": "write30", "submission_key": "d" * 24},
    )
    assert bought.status_code == 302
    with app.app_context():
        order = db.session.scalars(sa.select(Order).order_by(Order.id.desc())).first()
        assert order.amount == 13930


def test_a_renewal_left_at_the_cashier_is_replaced_when_its_price_moved_or_a_coupon_comes(
    app, banded
):
    """The member opens the cashier for a renewal at ¥40.00 (early) and leaves it; the
    term runs out (¥50.00 now) and they renew again: a new order at ¥50.00, not the stale
    ¥40.00 one. Then, with that one at the cashier, they type a coupon: the price check's
    ¥45.00 is what the next order charges, not "the order is being paid"."""
    add_coupon(app, "RENEW10", percent_off=10, tiers=["main"])
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=phone)
    browser = app.test_client()
    log_in_member(app, browser, phone)
    with app.app_context():
        membership_id = db.session.scalar(sa.select(Membership.id))
    form = {"csrf_token": hidden_value(browser.get("/me").text, "csrf_token"), "provider": "fake"}
    first = browser.post(f"/me/renew/{membership_id}", data=form | {"coupon": ""})
    assert first.location.startswith("/fake-pay/")
    assert browser.post(f"/me/renew/{membership_id}", data=form | {"coupon": ""}).location == (
        first.location  # a double click: the same order
    )
    with app.app_context():
        membership = db.session.get(Membership, membership_id)
        membership.ends_at = utcnow() - timedelta(days=2)
        expire_memberships(now=utcnow())
        db.session.commit()
    assert "续费 ¥50.00" in browser.get("/me").text
    second = browser.post(f"/me/renew/{membership_id}", data=form | {"coupon": ""})
    assert second.location.startswith("/fake-pay/") and second.location != first.location
    checked = browser.post(f"/me/renew/{membership_id}/price", data=form | {"coupon": "RENEW10"})
    assert price_shown(checked.text)["price"] == 4500
    third = browser.post(f"/me/renew/{membership_id}", data=form | {"coupon": "RENEW10"})
    assert third.location.startswith("/fake-pay/"), third.get_data(as_text=True)[:300]
    with app.app_context():
        orders = db.session.execute(
            sa.select(Order.list_amount, Order.amount, Order.status).order_by(Order.id)
        ).all()[1:]  # the join's order first
        assert orders == [
            (4000, 4000, OrderStatus.EXPIRED),
            (5000, 5000, OrderStatus.EXPIRED),
            (5000, 4500, OrderStatus.OPEN),
        ]
        reasons = db.session.scalars(
            sa.select(AuditEntry.data).where(AuditEntry.action == "order.withdrawn")
        ).all()
        assert reasons == [{"reason": "price_changed"}, {"reason": "coupon"}]
