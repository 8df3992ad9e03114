"""Money that arrives twice, late or from elsewhere: each case a signed delivery, as a
provider would send it, against the running app (SQLite here, PostgreSQL in CI)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.events import Event
from membership.lifecycle import expire_memberships, start_renewal
from membership.models import (
    Application,
    ApplicationStatus,
    Invitation,
    InvitationStatus,
    Membership,
    MembershipStatus,
    Tier,
)
from membership.services import withdraw_paid_access
from payments.models import (
    FlagKind,
    InboxStatus,
    LedgerEntry,
    Order,
    OrderFlag,
    OrderStatus,
    Payment,
    PaymentStatus,
    WebhookEvent,
)
from payments.providers import InvalidNotification
from payments.providers.stripe import StripeProvider
from payments.services import surplus_payments
from perks.models import CouponUse, CouponUseStatus
from tests import fake_apis
from tests.helpers import (
    add_coupon,
    cashier_action,
    charge,
    checkout_session,
    count,
    dispute,
    join_and_pay,
    log_in,
    log_in_member,
    money_snapshot,
    new_phone,
    refund_in_full,
    signed_notification,
    start_test_payment,
    stripe_delivery,
    submit_form,
    submit_join,
    wechat_paid,
    wechat_refunded,
)
from tests.test_lifecycle import _renew as renew_from_my_page
from tests.test_wechat_login import IN_WECHAT

DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"


def _stripe(client, event_type, obj, **kwargs):
    body, headers = stripe_delivery(event_type, obj, **kwargs)
    return client.post("/webhooks/stripe", data=body, headers=headers)


def _wechat(client, body: bytes):
    return client.post("/webhooks/wechatpay", data=body, headers={"Content-Type": "text/xml"})


def _payments(app) -> list[Payment]:
    with app.app_context():
        payments = db.session.scalars(sa.select(Payment).order_by(Payment.id)).all()
        for payment in payments:
            payment.order  # noqa: B018 (loaded for the builders, outside the context)
        return payments


def _flags(app) -> list[tuple[FlagKind, int | None]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(OrderFlag.kind, OrderFlag.payment_id).order_by(OrderFlag.id)
        ).all()
        return [tuple(row) for row in rows]


# 1. An order paid twice, then one of its payments taken back ---------------------------


@pytest.fixture
def paid_twice(app, client, demo, apis):
    """One order, paid by a WeChat Pay QR code and then by Stripe Checkout (the payer
    tried both): both confirmed. Returns (wechat payment, stripe payment)."""
    client.environ_base["HTTP_USER_AGENT"] = DESKTOP
    assert submit_join(client, "main", provider="wechatpay").status_code == 302
    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        start_test_payment(order, "stripe")
        db.session.commit()
    wechat, card = _payments(app)
    assert _wechat(client, wechat_paid(wechat)).status_code == 200
    assert _stripe(client, "checkout.session.completed", checkout_session(card)).status_code == 200
    return wechat, card


def test_the_second_payment_of_a_paid_order_is_flagged_as_the_surplus(app, paid_twice):
    _wechat_payment, card = paid_twice
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.CONFIRMED, PaymentStatus.CONFIRMED]
    assert state["order"] == [OrderStatus.PAID]
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert _flags(app) == [(FlagKind.PAID_TWICE, card.id)]
    with app.app_context():
        assert surplus_payments(db.session.scalars(sa.select(Order)).one()) == [
            db.session.get(Payment, card.id)
        ]


def _take_back(app, client, payment, how):
    """Take ``payment``'s money back as its provider reports it."""
    if how == "refund" and payment.provider == "wechatpay":
        response = _wechat(client, wechat_refunded(payment, payment.amount, "our-refund-1"))
    elif how == "refund":
        response = _stripe(client, "charge.refunded", charge(payment, amount_refunded=9900))
    else:
        response = _stripe(client, "charge.dispute.created", dispute(payment))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("which", "how"),
    [("first", "refund"), ("second", "refund"), ("second", "chargeback")],
)
def test_taking_back_one_payment_of_two_keeps_access(app, client, paid_twice, which, how):
    """The other payment still covers the order: the membership and invitation stay."""
    wechat, card = paid_twice
    _take_back(app, client, wechat if which == "first" else card, how)
    state = money_snapshot(app)
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert state["order"] == [OrderStatus.PAID]


def test_taking_back_both_payments_ends_access(app, client, paid_twice):
    wechat, card = paid_twice
    _take_back(app, client, card, "refund")
    _take_back(app, client, wechat, "refund")
    state = money_snapshot(app)
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["order"] == [OrderStatus.REFUNDED]
    assert [kind for kind, _amount in state["ledger"]] == ["payment", "payment", "refund", "refund"]


def test_the_admin_refund_page_names_the_surplus_payment(app, client, paid_twice, admin):
    _wechat_payment, card = paid_twice
    log_in(client)
    page = client.get(f"/admin/payments/payments/{card.id}/refund").get_data(as_text=True)
    assert 'id="surplus"' in page
    attention = client.get("/admin/payments/attention").get_data(as_text=True)
    assert f"/admin/payments/payments/{card.id}/refund" in attention
    # Refunded from the admin page (Stripe answers at once): access stays.
    response = submit_form(
        client,
        f"/admin/payments/payments/{card.id}/refund",
        {"amount": "99.00", "reason": "付了两次 paid twice"},
    )
    assert response.status_code == 302
    state = money_snapshot(app)
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert state["ledger"][-1] == ("refund", -9900)
    # The admin marks the flag dealt with; it leaves the list, the audit keeps it.
    with app.app_context():
        flag_id = db.session.scalar(sa.select(OrderFlag.id))
    resolved = submit_form(client, "/admin/payments/attention", {"flag": str(flag_id)})
    assert resolved.status_code == 302
    assert f"/payments/{card.id}/refund" not in client.get("/admin/payments/attention").text
    with app.app_context():
        assert db.session.scalar(sa.select(OrderFlag.resolved_by)) is not None
        assert db.session.scalar(
            sa.select(AuditEntry.id).where(AuditEntry.action == "order.flag_resolved")
        )


# 2. One person, two orders of one tier, both paid ------------------------------------


def test_a_late_first_payment_after_joining_again_makes_no_second_member(app, client, demo):
    """Inside WeChat (the openid is who they are): the first order's payment seems lost,
    the person applies again and pays; then the first payment arrives."""
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    first = submit_join(client, "main", contact_value="", wechat_id="wang_reader88")
    assert first.location.startswith("/fake-pay/")
    second = submit_join(client, "main", contact_value="", wechat_id="wang_reader88")
    status = cashier_action(client, second.location).location
    assert money_snapshot(app)["members"] == ["0001"]
    with app.app_context():
        late = db.session.scalars(sa.select(Payment).order_by(Payment.id)).first()
        body, headers = signed_notification(late)
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert _flags(app) == [(FlagKind.BOUGHT_TWICE, late.id)]
    assert "/invitations/" in client.get(status).text


# 3, 4, 6. Stripe deliveries that are genuine but not for us, or not now ---------------


@pytest.fixture
def stripe_payment(app, client, demo, apis) -> Payment:
    assert submit_join(client, "main", provider="stripe").status_code == 302
    return _payments(app)[0]


@pytest.mark.parametrize("offset", [-301, 301, 86_400])
def test_a_stripe_signature_outside_the_tolerance_either_way_is_refused(
    app, client, stripe_payment, offset
):
    before = money_snapshot(app)
    response = _stripe(
        client,
        "checkout.session.completed",
        checkout_session(stripe_payment),
        timestamp=int(time.time()) + offset,
    )
    assert response.status_code == 400
    assert money_snapshot(app) == before
    with app.app_context():
        assert "tolerance" in db.session.scalar(sa.select(WebhookEvent.detail))


def test_a_stripe_signature_within_the_tolerance_is_taken(app, client, stripe_payment):
    response = _stripe(
        client,
        "checkout.session.completed",
        checkout_session(stripe_payment),
        timestamp=int(time.time()) + 240,
    )
    assert response.status_code == 200
    assert money_snapshot(app)["members"] == ["0001"]


@pytest.mark.parametrize("intent", ["pi_gone", "pi_other_sale"])
def test_an_event_about_a_payment_that_is_not_ours_is_answered_2xx(
    app, client, stripe_payment, apis, intent
):
    """Stripe says there is no such intent, or it is another sale on the same account:
    recorded, answered 2xx so Stripe stops, nothing changes."""
    before = money_snapshot(app)
    obj = {**charge(stripe_payment, amount_refunded=9900), "payment_intent": intent}
    assert _stripe(client, "charge.refunded", obj).status_code == 200
    assert money_snapshot(app) == before
    assert apis.last(f"/v1/payment_intents/{intent}") is not None
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail) == (InboxStatus.IGNORED, "not one of our payments")


def test_a_live_event_is_refused_by_test_keys(app, client, stripe_payment):
    before = money_snapshot(app)
    response = _stripe(
        client, "checkout.session.completed", checkout_session(stripe_payment), livemode=True
    )
    assert response.status_code == 400
    assert money_snapshot(app) == before
    with app.app_context():
        assert "test-mode" in db.session.scalar(sa.select(WebhookEvent.detail))


def test_a_test_event_is_refused_by_live_keys(app, stripe_payment):
    live = StripeProvider("sk_live_qunmen", fake_apis.STRIPE_WEBHOOK_SECRET)
    with app.app_context():
        payment = db.session.get(Payment, stripe_payment.id)
        body, headers = stripe_delivery("checkout.session.completed", checkout_session(payment))
    with pytest.raises(InvalidNotification, match="live-mode"):
        live.parse_notification(body, headers, received_at=utcnow())


# 5. A second WeChat transaction for a confirmed payment --------------------------------


def test_a_second_transaction_for_a_confirmed_payment_is_recorded(app, client, demo, apis):
    client.environ_base["HTTP_USER_AGENT"] = DESKTOP
    assert submit_join(client, "main", provider="wechatpay").status_code == 302
    (payment,) = _payments(app)
    assert _wechat(client, wechat_paid(payment)).status_code == 200
    before = money_snapshot(app)
    again = wechat_paid(payment, transaction_id="4200000000000000099999")
    assert _wechat(client, again).status_code == 200
    assert money_snapshot(app) == before  # no second ledger entry: an admin looks first
    assert _flags(app) == [(FlagKind.SECOND_TRANSACTION, payment.id)]
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id.desc())).first()
        assert event.status is InboxStatus.PROCESSED
        entry = db.session.scalar(
            sa.select(AuditEntry).where(AuditEntry.action == "payment.second_transaction")
        )
        assert entry.data["reported"] == "4200000000000000099999"
    # The same second transaction again is a plain redelivery: one flag.
    assert _wechat(client, again).status_code == 200
    assert len(_flags(app)) == 1


# 7. Checkout Sessions last as long as their order; late payments and coupons ------------


def test_a_checkout_session_expires_with_its_order(app, stripe_payment, apis):
    sent = int(apis.last("/v1/checkout/sessions").data["expires_at"])
    with app.app_context():
        order = db.session.get(Payment, stripe_payment.id).order
        # Stripe takes 30 minutes to a day; the order's end when it is within that.
        assert sent >= int(order.expires_at.timestamp())
        assert time.time() + 30 * 60 < sent <= time.time() + 24 * 3600
        assert sent - order.expires_at.timestamp() < 120


def test_a_late_payment_keeps_access_but_not_a_coupon_past_its_limit(app, client, demo):
    add_coupon(app, "ONLY1", max_uses=1)
    late_buyer = app.test_client()
    assert submit_join(late_buyer, "main", coupon="ONLY1").status_code == 302
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        order.expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()
    # Someone else takes the released use, and pays.
    join_and_pay(client, "main", coupon="ONLY1")
    with app.app_context():
        late = db.session.scalars(sa.select(Payment).order_by(Payment.id)).first()
        body, headers = signed_notification(late)
    assert late_buyer.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    state = money_snapshot(app)
    assert state["members"] == ["0001", "0002"]  # the late payer keeps what they paid for
    assert state["memberships"] == [MembershipStatus.ACTIVE, MembershipStatus.ACTIVE]
    with app.app_context():
        uses = db.session.scalars(sa.select(CouponUse.status).order_by(CouponUse.id)).all()
        assert uses == [CouponUseStatus.RELEASED, CouponUseStatus.CONSUMED]
        assert db.session.get(Order, late.order_id).status is OrderStatus.PAID
    assert _flags(app) == [(FlagKind.COUPON_OVER_LIMIT, None)]


def test_a_late_payment_consumes_a_coupon_that_has_a_use_left(app, client, demo):
    add_coupon(app, "TWICE", max_uses=2)
    assert submit_join(client, "main", coupon="TWICE").status_code == 302
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        order.expires_at = utcnow() - timedelta(minutes=1)
        late = order.payments[0]
        body, headers = signed_notification(late)
        db.session.commit()
    # Another buyer's reservation releases the lapsed one, then the money comes.
    assert submit_join(app.test_client(), "main", coupon="TWICE").status_code == 302
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    with app.app_context():
        uses = db.session.scalars(sa.select(CouponUse.status).order_by(CouponUse.id)).all()
        assert uses == [CouponUseStatus.CONSUMED, CouponUseStatus.RESERVED]
    assert _flags(app) == []


# 8. The states the models describe ------------------------------------------------------


def test_a_lost_chargeback_refunds_the_order(app, client, stripe_payment):
    _stripe(client, "checkout.session.completed", checkout_session(stripe_payment))
    _stripe(client, "charge.dispute.created", dispute(stripe_payment))
    assert money_snapshot(app)["order"] == [OrderStatus.PAID]  # pending a decision
    _stripe(client, "charge.dispute.closed", dispute(stripe_payment, status="lost"))
    state = money_snapshot(app)
    assert state["order"] == [OrderStatus.REFUNDED]
    assert state["memberships"] == [MembershipStatus.ENDED]


def test_settle_closing_an_expired_orders_payment_expires_the_order(
    app, client, demo, apis, runner
):
    assert submit_join(client, "main", provider="stripe").status_code == 302
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        order.expires_at = utcnow() - timedelta(minutes=1)
        order.payments[0].created_at = utcnow() - timedelta(minutes=40)
        db.session.commit()
    result = runner.invoke(args=["payments", "settle"])
    assert "已核实：1；" in result.output, result.output
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.EXPIRED]
    assert state["order"] == [OrderStatus.EXPIRED]
    with app.app_context():
        assert db.session.scalar(
            sa.select(AuditEntry.id).where(AuditEntry.action == "order.expired")
        )


# 9. A renewal paid after the membership ended -----------------------------------------


@pytest.fixture
def thirty_days(app, demo):
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days, tier.renewal_price = 30, 5000
        db.session.commit()


def _renewal_paid_after(app, client, end_by):
    """A member starts a renewal, their membership ends (``end_by``), then the renewal's
    payment arrives. Returns when it arrived."""
    join_and_pay(client, "main")
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        renewal = start_renewal(membership)
        payment = start_test_payment(db.session.get(Order, renewal.order_id), actor="member")
        db.session.commit()
        end_by(membership)
        db.session.commit()
        body, headers = signed_notification(payment)
    arrived = utcnow()
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    return arrived


def _expire(membership):
    """Its term ended yesterday; the daily expiry ran."""
    membership.ends_at = utcnow() - timedelta(days=1)
    expire_memberships(now=utcnow())


def _refund_ended(membership):
    from membership.services import end_membership

    end_membership(
        membership, MembershipStatus.ENDED, reason="refunded", actor="staff:1", now=utcnow()
    )


def test_a_renewal_paid_after_the_term_ran_out_restores_access(app, client, thirty_days):
    arrived = _renewal_paid_after(app, client, _expire)
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        assert membership.status is MembershipStatus.ACTIVE
        assert abs(membership.ends_at - (arrived + timedelta(days=30))) < timedelta(minutes=1)
        invitations = db.session.scalars(sa.select(Invitation.status).order_by(Invitation.id))
        assert invitations.all() == [InvitationStatus.REVOKED, InvitationStatus.ISSUED]
        assert count(Membership) == 1
    assert _flags(app) == []


def test_a_renewal_paid_after_a_refund_ended_it_is_put_before_the_admins(app, client, thirty_days):
    _renewal_paid_after(app, client, _refund_ended)
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        assert membership.status is MembershipStatus.ENDED
        renewal_payment = db.session.scalars(sa.select(Payment.id).order_by(Payment.id)).all()[-1]
        # The money is in the ledger, waiting for the admin's decision.
        assert (
            db.session.scalar(
                sa.select(LedgerEntry.amount).where(LedgerEntry.payment_id == renewal_payment)
            )
            == 5000
        )
    assert _flags(app) == [(FlagKind.PAID_AFTER_END, renewal_payment)]


def test_a_refund_naming_another_total_is_refused_after_the_payment_too(
    app, client, stripe_payment
):
    _stripe(client, "checkout.session.completed", checkout_session(stripe_payment))
    before = money_snapshot(app)
    wrong = charge(stripe_payment, amount=100, amount_refunded=100)
    assert _stripe(client, "charge.refunded", wrong).status_code == 400
    assert money_snapshot(app) == before


# 10. A renewal whose money went back ----------------------------------------------------


def _renewed(app, client, provider: str = "fake") -> tuple[datetime, int]:
    """A member joined a 30-day tier and renewed it (from their page, or through Stripe),
    both paid. Returns the end their join gave them and the renewal's payment."""
    phone = new_phone()
    join_and_pay(app.test_client(), "main", contact_value=phone)
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        first_end = membership.ends_at
    if provider == "fake":
        log_in_member(app, client, phone)
        cashier_action(client, renew_from_my_page(app, client).location, "pay")
    else:
        with app.app_context():
            membership = db.session.scalars(sa.select(Membership)).one()
            order = db.session.get(Order, start_renewal(membership).order_id)
            payment = start_test_payment(order, provider, actor="member")
            db.session.commit()
            paid = checkout_session(payment)
        assert _stripe(client, "checkout.session.completed", paid).status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(Membership.ends_at)) == first_end + timedelta(days=30)
        return first_end, db.session.scalar(sa.select(sa.func.max(Payment.id)))


def _renewal_application() -> Application:
    return db.session.scalar(sa.select(Application).where(Application.renews.has()))


@pytest.mark.parametrize("revoke_access", [False, True])
def test_refunding_a_renewal_takes_back_its_days_and_keeps_what_the_join_paid_for(
    app, client, thirty_days, revoke_access
):
    first_end, payment_id = _renewed(app, client)
    with app.app_context():
        refund_in_full(db.session.get(Payment, payment_id), revoke_access=revoke_access)
        membership = db.session.scalars(sa.select(Membership)).one()
        assert (membership.status, membership.ends_at) == (MembershipStatus.ACTIVE, first_end)
        assert _renewal_application().status is ApplicationStatus.TAKEN_BACK
        assert db.session.scalar(sa.select(Invitation.status)) is InvitationStatus.ISSUED
        # Told again (a later refund, a redelivery), it takes nothing more.
        order = db.session.get(Payment, payment_id).order
        withdraw_paid_access(order, now=utcnow(), reason="refunded")
        assert membership.ends_at == first_end
        events = db.session.scalars(sa.select(Event.type)).all()
        assert events.count("membership.renewal_taken_back") == 1
        status_page = f"/join/demo/status/{_renewal_application().public_id}"
    assert 'id="renewal-taken-back"' in client.get(status_page).text  # the member is told


def test_a_renewal_refunded_once_its_days_were_all_that_was_left_ends_access(
    app, client, thirty_days
):
    """Paid after the term ran out, the renewal was all the membership had: refunded, the
    membership expires now and its new invitation is revoked."""
    _renewal_paid_after(app, client, _expire)
    with app.app_context():
        renewal_payment = db.session.scalars(sa.select(Payment.id).order_by(Payment.id)).all()[-1]
        refund_in_full(db.session.get(Payment, renewal_payment))
        membership = db.session.scalars(sa.select(Membership)).one()
        assert membership.status is MembershipStatus.EXPIRED
        assert membership.ends_at <= utcnow()
        invitations = db.session.scalars(sa.select(Invitation.status).order_by(Invitation.id))
        assert invitations.all() == [InvitationStatus.REVOKED, InvitationStatus.REVOKED]


def test_a_chargeback_on_a_renewal_takes_its_days_and_a_won_one_gives_them_back(
    app, client, thirty_days, apis
):
    first_end, payment_id = _renewed(app, client, "stripe")
    for delivery, end, status in (
        (("charge.dispute.created", {}), first_end, ApplicationStatus.TAKEN_BACK),
        (
            ("charge.dispute.closed", {"status": "won"}),
            first_end + timedelta(days=30),
            ApplicationStatus.ADMITTED,
        ),
    ):
        event_type, fields = delivery
        with app.app_context():
            obj = dispute(db.session.get(Payment, payment_id), **fields)
        assert _stripe(client, event_type, obj).status_code == 200
        with app.app_context():
            assert db.session.scalar(sa.select(Membership.ends_at)) == end, event_type
            assert _renewal_application().status is status, event_type


def test_refunding_a_renewal_that_added_no_days_leaves_the_membership_as_it_is(
    app, client, thirty_days
):
    """A renewal paid after a refund ended the membership was put before the admins, not
    applied: refunding it, as they are asked to, takes nothing back."""
    _renewal_paid_after(app, client, _refund_ended)
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        before = (membership.status, membership.ends_at)
        renewal_payment = db.session.scalars(sa.select(Payment.id).order_by(Payment.id)).all()[-1]
        refund_in_full(db.session.get(Payment, renewal_payment))
        db.session.refresh(membership)
        assert (membership.status, membership.ends_at) == before
        assert _renewal_application().status is ApplicationStatus.ADMITTED
