"""Stripe: Checkout Sessions through the real stripe library against a local fake API,
and webhooks signed with stripe's own scheme."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from core.db import db
from membership.models import InvitationStatus, MembershipStatus
from payments.models import (
    DisputeStatus,
    InboxStatus,
    OrderStatus,
    Payment,
    PaymentStatus,
    RefundStatus,
    WebhookEvent,
)
from payments.providers import ProviderError
from payments.providers.stripe import StripeProvider
from tests.helpers import (
    charge,
    checkout_session,
    dispute,
    money_snapshot,
    stripe_delivery,
    submit_join,
)


@pytest.fixture
def payment_id(app, client, demo, apis) -> int:
    """A prospect sent to Stripe Checkout for the ¥99 tier."""
    response = submit_join(client, "main", provider="stripe")
    assert response.status_code == 302
    assert response.location.startswith("https://checkout.stripe.test/c/pay/cs_test_")
    with app.app_context():
        return db.session.scalars(sa.select(Payment.id)).one()


def deliver(app, client, build, **kwargs):
    """Build a signed delivery from the payment (``build(payment)`` gives the event type
    and object) and post it to the Stripe webhook."""
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        event_type, obj = build(payment)
        body, headers = stripe_delivery(event_type, obj, **kwargs)
    return client.post("/webhooks/stripe", data=body, headers=headers)


def completed(payment):
    return "checkout.session.completed", checkout_session(payment)


def refunded(amount_refunded):
    return lambda payment: ("charge.refunded", charge(payment, amount_refunded=amount_refunded))


def test_checkout_session_carries_our_ids(app, payment_id, apis):
    request = apis.last("/v1/checkout/sessions")
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        assert request.data["mode"] == "payment"
        assert request.data["line_items[0][price_data][unit_amount]"] == "9900"
        assert request.data["line_items[0][price_data][currency]"] == "cny"
        assert request.data["client_reference_id"] == payment.order.public_id
        assert request.data["metadata[payment]"] == payment.public_id
        assert request.data["payment_intent_data[metadata][payment]"] == payment.public_id
        assert request.data["success_url"].startswith("http://qunmen.test/join/demo/status/")
        assert request.headers["Idempotency-Key"] == f"checkout-{payment.public_id}"
        assert payment.provider_data["session"] == "cs_test_0001"


def test_double_click_opens_one_session(app, client, demo, apis):
    from tests.helpers import PROSPECT, open_join_form, prove_join

    data = {**open_join_form(client), **PROSPECT, "provider": "stripe"}
    first = client.post("/join/demo/main", data=data)
    second = client.post("/join/demo/main", data=data)
    assert first.location == second.location  # the same application's code step
    first = prove_join(client, first.location)
    second = client.post("/join/demo/main", data=data)
    assert first.location == second.location
    assert len([r for r in apis.requests if r.path == "/v1/checkout/sessions"]) == 1


def test_completed_and_paid_admits(app, client, payment_id):
    response = deliver(app, client, completed)
    assert response.status_code == 200
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.CONFIRMED]
    assert state["members"] == ["0001"]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert state["ledger"] == [("payment", 9900)]


def test_delayed_payment_waits_for_its_own_event(app, client, payment_id):
    unpaid = lambda p: ("checkout.session.completed", checkout_session(p, payment_status="unpaid"))  # noqa: E731
    assert deliver(app, client, unpaid).status_code == 200
    assert money_snapshot(app)["members"] == []
    with app.app_context():
        assert db.session.scalars(sa.select(WebhookEvent.status)).one() is InboxStatus.IGNORED
    succeeded = lambda p: ("checkout.session.async_payment_succeeded", checkout_session(p))  # noqa: E731
    assert deliver(app, client, succeeded).status_code == 200
    assert money_snapshot(app)["members"] == ["0001"]


def test_async_failure_and_expiry_end_the_attempt(app, client, payment_id):
    failed = lambda p: ("checkout.session.async_payment_failed", checkout_session(p))  # noqa: E731
    deliver(app, client, failed)
    assert money_snapshot(app)["payment"] == [PaymentStatus.FAILED]
    expired = lambda p: ("checkout.session.expired", checkout_session(p, status="expired"))  # noqa: E731
    assert deliver(app, client, expired).status_code == 200
    assert money_snapshot(app)["payment"] == [PaymentStatus.FAILED]


def test_events_we_do_not_handle_get_a_2xx(app, client, payment_id):
    other = lambda p: ("customer.created", {"id": "cus_1", "object": "customer"})  # noqa: E731
    assert deliver(app, client, other).status_code == 200
    assert money_snapshot(app)["payment"] == [PaymentStatus.CREATED]


def test_full_refund_ends_access_once(app, client, payment_id):
    deliver(app, client, completed)
    assert deliver(app, client, refunded(9900)).status_code == 200
    state = money_snapshot(app)
    assert state["order"] == [OrderStatus.REFUNDED]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]
    assert state["members"] == ["0001"]  # numbers are never reused
    # Stripe sends the running total again with a later event: nothing more.
    assert deliver(app, client, refunded(9900)).status_code == 200
    assert money_snapshot(app) == state


def test_partial_refund_keeps_access(app, client, payment_id):
    deliver(app, client, completed)
    deliver(app, client, refunded(2000))
    state = money_snapshot(app)
    assert state["refunds"] == [(2000, RefundStatus.SUCCEEDED)]
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    deliver(app, client, refunded(9900))
    state = money_snapshot(app)
    assert state["refunds"] == [(2000, RefundStatus.SUCCEEDED), (7900, RefundStatus.SUCCEEDED)]
    assert state["memberships"] == [MembershipStatus.ENDED]


@pytest.mark.parametrize("order", ["payment first", "refund first"])
def test_refund_and_payment_in_either_order(app, client, payment_id, order):
    events = [completed, refunded(9900)]
    for build in events if order == "payment first" else events[::-1]:
        assert deliver(app, client, build).status_code == 200
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.CONFIRMED]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]


def test_stripe_is_asked_about_an_unknown_intent_with_no_transaction_open(
    app, client, payment_id, monkeypatch
):
    """A refund arriving first names only the payment intent: Stripe is asked whose it is,
    the raw delivery committed first (on SQLite an open transaction holds the write lock);
    when Stripe cannot answer, the delivery fails (5xx, delivered again) and nothing moves."""
    seen, answers = [], iter([ProviderError("Stripe: unreachable"), None])
    original = StripeProvider.lookup_payment_public_id

    def watching(self, external_id):
        seen.append(db.session().in_transaction())
        if error := next(answers):
            raise error
        return original(self, external_id)

    monkeypatch.setattr(StripeProvider, "lookup_payment_public_id", watching)
    before = money_snapshot(app)
    assert deliver(app, client, refunded(9900), event_id="evt_refund_first").status_code == 500
    assert money_snapshot(app) == before
    with app.app_context():
        failed = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (failed.status, failed.event_id) == (InboxStatus.FAILED, "evt_refund_first")
        assert failed.detail == "Stripe: unreachable"
    assert deliver(app, client, refunded(9900), event_id="evt_refund_first").status_code == 200
    assert seen == [False, False]
    state = money_snapshot(app)
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]
    assert state["memberships"] == [MembershipStatus.ENDED]


@pytest.mark.parametrize("order", ["payment first", "dispute first"])
def test_dispute_and_payment_in_either_order(app, client, payment_id, order):
    opened = lambda p: ("charge.dispute.created", dispute(p))  # noqa: E731
    events = [completed, opened]
    for build in events if order == "payment first" else events[::-1]:
        assert deliver(app, client, build).status_code == 200
    state = money_snapshot(app)
    assert state["disputes"] == [DisputeStatus.OPEN]
    assert state["memberships"] == [MembershipStatus.SUSPENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["ledger"] == [("payment", 9900), ("dispute", -9900)]


def test_dispute_won_restores_access_and_lost_ends_it(app, client, payment_id):
    deliver(app, client, completed)
    deliver(app, client, lambda p: ("charge.dispute.created", dispute(p)))
    deliver(app, client, lambda p: ("charge.dispute.closed", dispute(p, status="won")))
    state = money_snapshot(app)
    assert state["disputes"] == [DisputeStatus.WON]
    assert state["memberships"] == [MembershipStatus.ACTIVE]
    assert state["invitations"] == [InvitationStatus.REVOKED, InvitationStatus.ISSUED]
    assert state["ledger"] == [("payment", 9900), ("dispute", -9900), ("dispute_won", 9900)]


def test_dispute_lost_ends_access(app, client, payment_id):
    deliver(app, client, completed)
    deliver(app, client, lambda p: ("charge.dispute.created", dispute(p)))
    deliver(app, client, lambda p: ("charge.dispute.closed", dispute(p, status="lost")))
    state = money_snapshot(app)
    assert state["disputes"] == [DisputeStatus.LOST]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["ledger"] == [("payment", 9900), ("dispute", -9900)]


def _refused(app, client, response):
    assert response.status_code == 400
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert event.status is InboxStatus.REJECTED
        assert event.detail


def test_forged_signature_is_refused(app, client, payment_id):
    before = money_snapshot(app)
    response = deliver(app, client, completed, secret="whsec_someone_else")
    _refused(app, client, response)
    assert money_snapshot(app) == before


def test_stale_signature_is_refused(app, client, payment_id):
    before = money_snapshot(app)
    response = deliver(app, client, completed, timestamp=int(time.time()) - 301)
    _refused(app, client, response)
    assert money_snapshot(app) == before


def test_amount_tampered_after_signing_is_refused(app, client, payment_id):
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        body, headers = stripe_delivery(*completed(payment))
    event = json.loads(body)
    event["data"]["object"]["amount_total"] = 1
    before = money_snapshot(app)
    response = client.post("/webhooks/stripe", data=json.dumps(event), headers=headers)
    _refused(app, client, response)
    assert money_snapshot(app) == before


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"amount_total": 990}, "does not match"),
        ({"currency": "usd"}, "does not match"),
        ({"currency": "xxx"}, "not an amount"),
        ({"amount_total": "9900"}, "not an amount"),
    ],
)
def test_genuine_event_that_does_not_match_is_refused(app, client, payment_id, fields, detail):
    before = money_snapshot(app)
    response = deliver(
        app, client, lambda p: ("checkout.session.completed", checkout_session(p, **fields))
    )
    _refused(app, client, response)
    assert money_snapshot(app) == before
    with app.app_context():
        assert detail in db.session.scalars(sa.select(WebhookEvent.detail)).one()


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"id": "evt_1"}'])
def test_malformed_bodies_are_refused(app, client, payment_id, body):
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(body.decode(), "whsec_test_qunmen")
    before = money_snapshot(app)
    response = client.post("/webhooks/stripe", data=body, headers={"Stripe-Signature": header})
    _refused(app, client, response)
    assert money_snapshot(app) == before


def test_same_event_ten_times_counts_once(app, client, payment_id):
    for _ in range(10):
        assert deliver(app, client, completed, event_id="evt_repeat").status_code == 200
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert state["ledger"] == [("payment", 9900)]
    with app.app_context():
        statuses = db.session.scalars(
            sa.select(WebhookEvent.status).order_by(WebhookEvent.id)
        ).all()
    assert statuses == [InboxStatus.PROCESSED]  # the nine others were answered from a read
