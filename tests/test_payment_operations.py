"""Running payments: failed deliveries replayed, payments no notification settled,
refunds from the admin page through Stripe."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

import membership.paid_join
import membership.services
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from membership.models import Member, Membership, MembershipStatus
from payments import inbox
from payments.models import (
    InboxStatus,
    LedgerEntry,
    Order,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)
from payments.providers.stripe import StripeProvider
from tests.helpers import (
    checkout_session,
    count,
    signed_notification,
    stripe_delivery,
    submit_form,
    submit_join,
    wechat_paid,
)


def _payment(app):
    with app.app_context():
        return db.session.scalars(sa.select(Payment)).one()


@pytest.fixture(params=["fast path", "ORM path"])
def broken_admission(request, app, monkeypatch):
    """The database fails once in the middle of admitting a payer: on the paid join's
    fast path (membership/paid_join.py), or on the ORM path (the fast path off)."""
    calls = {"n": 0}
    if request.param == "fast path":
        module, name = membership.paid_join, "_invite"
    else:
        monkeypatch.setitem(app.config, "PAID_JOIN_FAST_PATH", False)
        module, name = membership.services, "issue_invitation"
    original = getattr(module, name)

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("INSERT INTO invitations", {}, Exception("disk I/O error"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, fail_once)
    return calls


def _nothing_written(app):
    with app.app_context():
        assert db.session.scalars(sa.select(Payment.status)).one() is PaymentStatus.CREATED
        assert db.session.scalars(sa.select(Order.status)).one() == "open"
        assert count(Member) == 0
        assert count(LedgerEntry) == 0


def test_database_error_mid_way_answers_fail_and_writes_nothing(
    app, client, demo, apis, broken_admission
):
    submit_join(client, "main", provider="wechatpay")
    with app.app_context():
        body = wechat_paid(db.session.scalars(sa.select(Payment)).one())
    first = client.post("/webhooks/wechatpay", data=body)
    assert first.status_code == 500
    assert b"FAIL" in first.data
    _nothing_written(app)
    # WeChat Pay delivers again: this time it goes through.
    second = client.post("/webhooks/wechatpay", data=body)
    assert second.status_code == 200
    assert b"SUCCESS" in second.data
    with app.app_context():
        assert db.session.scalars(sa.select(Member.number_label)).all() == ["0001"]
        statuses = db.session.scalars(sa.select(WebhookEvent.status).order_by(WebhookEvent.id))
        assert list(statuses) == [InboxStatus.FAILED, InboxStatus.PROCESSED]


def test_failed_delivery_is_replayed_from_the_cli(app, client, demo, runner, broken_admission):
    submit_join(client, "main")
    with app.app_context():
        body, headers = signed_notification(db.session.scalars(sa.select(Payment)).one())
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 500
    _nothing_written(app)
    listed = runner.invoke(args=["payments", "failed"])
    assert "失败：1" in listed.output
    assert "disk I/O error" in listed.output
    result = runner.invoke(args=["payments", "replay", "--all"])
    assert result.exit_code == 0, result.output
    assert "processed" in result.output
    with app.app_context():
        assert db.session.scalars(sa.select(Member.number_label)).all() == ["0001"]
        assert inbox.failed_events() == []
    assert runner.invoke(args=["payments", "replay"]).exit_code != 0


def test_a_delivery_left_unfinished_is_listed_and_replayed(app, client, demo, runner):
    """A process that stopped after storing a delivery (the identify path commits it before
    asking the provider) left it marked received: after a while it is listed with the
    failed ones and replayed; a delivery still being processed is left alone."""
    submit_join(client, "main")
    with app.app_context():
        payment, now = db.session.scalars(sa.select(Payment)).one(), utcnow()
        for age in (inbox.STALLED_AFTER + timedelta(minutes=1), timedelta(minutes=1)):
            body, headers = signed_notification(payment, event_id="evt_cut", now=now - age)
            db.session.add(
                WebhookEvent(
                    provider="fake",
                    received_at=now - age,
                    headers=headers,
                    body=body,
                    status=InboxStatus.RECEIVED,
                )
            )
        db.session.commit()
        stalled, fresh = db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id))
        assert inbox.replay(fresh).status is InboxStatus.RECEIVED  # not touched
        assert [event.id for event in inbox.failed_events()] == [stalled.id]
        stalled_id = stalled.id
    listed = runner.invoke(args=["payments", "failed"])
    assert f"{stalled_id}\tfake\treceived" in listed.output
    assert "失败：1" in listed.output
    result = runner.invoke(args=["payments", "replay", "--all"])
    assert f"{stalled_id}\tprocessed" in result.output
    with app.app_context():
        assert db.session.scalars(sa.select(Member.number_label)).all() == ["0001"]
        assert inbox.failed_events() == []


def test_settle_confirms_a_payment_whose_notification_never_came(app, client, demo, apis, runner):
    submit_join(client, "main", provider="wechatpay")
    payment = _payment(app)
    apis.wechat_orders[payment.public_id] = {
        "trade_state": "SUCCESS",
        "transaction_id": "4200000000000000000042",
        "total_fee": "9900",
        "fee_type": "CNY",
    }
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "已核实：1；" in result.output
    with app.app_context():
        assert db.session.scalars(sa.select(Member.number_label)).all() == ["0001"]
    # The notification arriving late changes nothing more.
    with app.app_context():
        body = wechat_paid(
            db.session.scalars(sa.select(Payment)).one(), transaction_id="4200000000000000000042"
        )
    assert client.post("/webhooks/wechatpay", data=body).status_code == 200
    with app.app_context():
        assert count(LedgerEntry) == 1


def test_settle_closes_unpaid_payments_of_expired_orders(app, client, demo, apis, runner):
    submit_join(client, "main", provider="wechatpay")
    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        order.expires_at = order.created_at - timedelta(seconds=1)
        db.session.commit()
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert any(r.path == "/pay/closeorder" for r in apis.requests)
    with app.app_context():
        assert db.session.scalars(sa.select(Payment.status)).one() is PaymentStatus.EXPIRED


def test_settle_leaves_pending_payments_alone(app, client, demo, apis, runner):
    submit_join(client, "main", provider="wechatpay")
    result = runner.invoke(args=["payments", "settle", "--older-than", "0"])
    assert "已核实：0；" in result.output
    assert _payment(app).status is PaymentStatus.CREATED


def _stripe_paid(app, client):
    submit_join(client, "main", provider="stripe")
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        body, headers = stripe_delivery("checkout.session.completed", checkout_session(payment))
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    return payment.id


def test_stripe_refund_from_the_admin_page(app, client, demo, apis, logged_in):
    payment_id = _stripe_paid(app, client)
    url = f"/admin/payments/payments/{payment_id}/refund"
    response = submit_form(logged_in, url, {"amount": "99", "reason": "重复购买"})
    assert response.status_code == 302
    request = apis.last("/v1/refunds")
    assert request.data["amount"] == "9900"
    assert request.data["payment_intent"].startswith("pi_")
    with app.app_context():
        refund = db.session.scalars(sa.select(Refund)).one()
        assert refund.status is RefundStatus.SUCCEEDED
        assert request.headers["Idempotency-Key"] == f"refund-{refund.public_id}"
        assert db.session.scalars(sa.select(Membership.status)).one() is MembershipStatus.ENDED
    assert "已退款" in logged_in.get(url).get_data(as_text=True)


def test_audit_entries_keep_amounts_the_same_for_every_reader(app, client, demo, apis, logged_in):
    """An amount in an audit entry is a record, not a page: the same text whichever language
    the admin (or the provider's request) asked for, not "CN¥99.00" for one and "¥99.00"
    for the next."""
    english = {"Accept-Language": "en"}
    payment_id = _stripe_paid(app, client)
    url = f"/admin/payments/payments/{payment_id}/refund"
    logged_in.get("/lang/en")
    response = submit_form(logged_in, url, {"amount": "99", "reason": "重复购买"}, headers=english)
    assert response.status_code == 302
    assert "Refunded" in logged_in.get(url, headers=english).get_data(as_text=True)
    with app.app_context():
        entries = db.session.execute(sa.select(AuditEntry.action, AuditEntry.data)).all()
        amounts = {action: data["amount"] for action, data in entries if "amount" in data}
    assert amounts == {
        "order.created": "99.00 CNY",
        "payment.confirmed": "99.00 CNY",
        "refund.requested": "99.00 CNY",
        "refund.succeeded": "99.00 CNY",
    }


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("100", "最多可退"),
        ("0", "退款金额不正确"),
        ("9.999", "金额格式不正确"),
        ("abc", "金额格式不正确"),
    ],
)
def test_refund_form_refuses_bad_amounts(app, client, demo, apis, logged_in, amount, message):
    payment_id = _stripe_paid(app, client)
    url = f"/admin/payments/payments/{payment_id}/refund"
    response = submit_form(logged_in, url, {"amount": amount, "reason": "x"})
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert count(Refund) == 0
    assert not any(r.path == "/v1/refunds" for r in apis.requests)


def test_refund_the_provider_refuses_is_recorded_as_failed(app, client, demo, apis, logged_in):
    payment_id = _stripe_paid(app, client)
    apis.stripe_refund_status = "failed"
    url = f"/admin/payments/payments/{payment_id}/refund"
    submit_form(logged_in, url, {"amount": "99", "reason": "x"})
    with app.app_context():
        assert db.session.scalars(sa.select(Refund.status)).one() is RefundStatus.FAILED
        assert db.session.scalars(sa.select(Membership.status)).one() is MembershipStatus.ACTIVE
    assert "退款失败" in logged_in.get(url).get_data(as_text=True)


def test_no_transaction_is_open_while_a_provider_answers(
    app, client, demo, apis, logged_in, monkeypatch
):
    """On SQLite an open transaction holds the write lock: a slow provider must not."""
    seen = []
    for name in ("start_payment", "request_refund", "query_payment"):
        original = getattr(StripeProvider, name)

        def watching(self, *args, _original=original, **kwargs):
            seen.append(db.session().in_transaction())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(StripeProvider, name, watching)
    payment_id = _stripe_paid(app, client)
    url = f"/admin/payments/payments/{payment_id}/refund"
    submit_form(logged_in, url, {"amount": "10", "reason": "部分退款"})
    submit_join(app.test_client(), "main", provider="stripe")
    assert seen == [False, False, False]  # start, refund, start
