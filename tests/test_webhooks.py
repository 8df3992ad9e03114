"""The webhook inbox with the fake provider: only genuine, matching notifications count,
each counts once, and a refused one changes nothing but its own inbox row."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from membership.models import Invitation, Member
from payments.models import (
    InboxStatus,
    LedgerEntry,
    Order,
    OrderStatus,
    Payment,
    PaymentStatus,
    WebhookEvent,
)
from payments.providers import EventKind
from payments.providers.fake import FakeProvider
from tests.helpers import count, signed_notification, statements, submit_join


@pytest.fixture
def payment_id(app, client, demo) -> int:
    """A prospect at the cashier: an open ¥99 order with one waiting fake payment."""
    assert submit_join(client, "main").status_code == 302
    with app.app_context():
        return db.session.scalars(sa.select(Payment.id)).one()


def notify(app, client, payment_id, kind=EventKind.PAYMENT_SUCCEEDED, *, tamper=None, **kwargs):
    """Build a signed notification for the payment, optionally tamper with it, post it."""
    with app.app_context():
        body, headers = signed_notification(db.session.get(Payment, payment_id), kind, **kwargs)
    if tamper:
        body, headers = tamper(body, dict(headers))
    return client.post("/webhooks/fake", data=body, headers=headers)


def state(app) -> dict[str, object]:
    """Everything a notification may change."""
    with app.app_context():
        return {
            "payments": db.session.execute(
                sa.select(Payment.id, Payment.status).order_by(Payment.id)
            ).all(),
            "orders": db.session.execute(
                sa.select(Order.id, Order.status).order_by(Order.id)
            ).all(),
            "members": count(Member),
            "invitations": count(Invitation),
            "ledger": count(LedgerEntry),
        }


def test_genuine_notification_admits_the_payer(app, client, payment_id):
    response = notify(app, client, payment_id)
    assert response.status_code == 200
    assert response.json == {"received": True, "message": "ok"}
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        assert payment.status is PaymentStatus.CONFIRMED
        assert payment.order.status is OrderStatus.PAID
        assert db.session.scalars(sa.select(Member.number_label)).one() == "0001"
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert event.status is InboxStatus.PROCESSED
        assert event.payment_id == payment_id


def _drop_signature(body, headers):
    del headers["Fake-Signature"]
    return body, headers


def _wrong_secret(body, headers):
    timestamp = headers["Fake-Signature"].split(",")[0].removeprefix("t=")
    headers["Fake-Signature"] = FakeProvider("not-the-secret").sign(body, int(timestamp))
    return body, headers


def _raise_amount(body, headers):
    event = json.loads(body)
    event["data"]["amount"] = 1
    return json.dumps(event, separators=(",", ":")).encode(), headers


def _garble(body, headers):
    return b"{not json", headers


def _malformed_header(body, headers):
    headers["Fake-Signature"] = "v1=abc"
    return body, headers


@pytest.mark.parametrize(
    "tamper",
    [_drop_signature, _wrong_secret, _raise_amount, _garble, _malformed_header],
    ids=["unsigned", "forged", "amount changed after signing", "not json", "bad header"],
)
def test_refused_notification_changes_nothing(app, client, payment_id, tamper):
    before = state(app)
    response = notify(app, client, payment_id, tamper=tamper)
    assert response.status_code == 400
    assert response.json["received"] is False
    assert state(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert event.status is InboxStatus.REJECTED
        assert event.detail


def test_stale_notification_is_refused(app, client, payment_id):
    before = state(app)
    response = notify(app, client, payment_id, now=utcnow() - timedelta(minutes=10))
    assert response.status_code == 400
    assert state(app) == before


def test_genuine_notification_with_a_wrong_amount_is_refused(app, client, payment_id):
    """Signed by the provider, but not what we asked for: refused, nothing changes."""
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        payment.amount = 100  # what the provider will report
        body, headers = signed_notification(payment)
        db.session.rollback()
    before = state(app)
    response = client.post("/webhooks/fake", data=body, headers=headers)
    assert response.status_code == 400
    assert state(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert event.status is InboxStatus.REJECTED
        assert "does not match" in event.detail


def test_notification_for_a_payment_not_ours_is_recorded_not_refused(app, client, payment_id):
    """Genuine, about another system's sale: a refusal would be delivered again for days."""
    before = state(app)
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        payment.public_id = "someone-elses-payment"
        body, headers = signed_notification(payment)
        db.session.rollback()
    assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    assert state(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail) == (InboxStatus.IGNORED, "not one of our payments")


def test_redelivery_of_the_same_event_counts_once(app, client, payment_id):
    first = notify(app, client, payment_id, event_id="evt_same")
    after_first = state(app)
    second = notify(app, client, payment_id, event_id="evt_same")
    assert first.status_code == second.status_code == 200
    assert state(app) == after_first
    assert second.json["message"].startswith("applied as event ")
    with app.app_context():
        statuses = db.session.scalars(sa.select(WebhookEvent.status).order_by(WebhookEvent.id))
        assert list(statuses) == [InboxStatus.PROCESSED]


def test_a_redelivery_is_answered_from_one_read_and_writes_nothing(app, client, payment_id):
    """Providers deliver again for hours when our answer is lost: those must not queue for
    the write lock behind the payments coming in."""
    notify(app, client, payment_id, event_id="evt_again")
    with app.app_context():
        body, headers = signed_notification(
            db.session.get(Payment, payment_id), event_id="evt_again"
        )
    statements = _statements_of(app, client, body, headers)
    assert statements and set(statements) == {"SELECT"}, statements


def test_second_success_for_a_paid_order_adds_no_member(app, client, payment_id):
    """A different event saying the same payment succeeded: no second member, number or
    invitation."""
    notify(app, client, payment_id, event_id="evt_one")
    after_first = state(app)
    assert notify(app, client, payment_id, event_id="evt_two").status_code == 200
    assert state(app) == after_first
    with app.app_context():
        assert count(Member) == 1
        assert count(Invitation) == 1


def test_failure_after_success_keeps_the_money(app, client, payment_id):
    notify(app, client, payment_id, EventKind.PAYMENT_SUCCEEDED)
    after_success = state(app)
    assert notify(app, client, payment_id, EventKind.PAYMENT_FAILED).status_code == 200
    assert state(app) == after_success


def test_success_after_a_failure_still_admits(app, client, payment_id):
    """Providers deliver out of order: the money that moved counts."""
    notify(app, client, payment_id, EventKind.PAYMENT_FAILED)
    notify(app, client, payment_id, EventKind.PAYMENT_SUCCEEDED)
    with app.app_context():
        assert db.session.get(Payment, payment_id).status is PaymentStatus.CONFIRMED
        assert count(Member) == 1


def test_second_payment_of_a_paid_order_is_kept_for_a_refund(app, client, payment_id):
    """Paid twice (two attempts both confirmed): both are in the ledger, one member."""
    with app.app_context():
        first = db.session.get(Payment, payment_id)
        second = Payment(
            public_id="second-attempt",
            order_id=first.order_id,
            provider="fake",
            amount=first.amount,
            currency=first.currency,
            status=PaymentStatus.CREATED,
            return_url="/",
            cancel_url="/",
            created_at=utcnow(),
        )
        db.session.add(second)
        db.session.commit()
        second_id = second.id
    notify(app, client, payment_id)
    notify(app, client, second_id)
    with app.app_context():
        assert count(LedgerEntry) == 2
        assert count(Member) == 1
        actions = db.session.scalars(sa.select(AuditEntry.action)).all()
        assert "order.paid_again" in actions


def test_unknown_provider_is_404(client):
    assert client.post("/webhooks/paypal", data=b"{}").status_code == 404


def test_oversized_notification_is_refused_and_recorded(app, client, payment_id):
    before = state(app)
    response = client.post(
        "/webhooks/fake", data=b"x" * (64 * 1024 + 1), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 413
    assert state(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail, event.body) == (
            InboxStatus.REJECTED,
            "body over 64 KB",
            b"",
        )


def test_ledger_entries_cannot_be_changed(app, client, payment_id):
    notify(app, client, payment_id)
    with app.app_context():
        entry = db.session.scalars(sa.select(LedgerEntry)).one()
        entry.amount = 1
        with pytest.raises(RuntimeError, match="immutable"):
            db.session.flush()
        db.session.rollback()


#: What a delivery that confirms a payment and admits a newcomer may cost (the fast path,
#: membership/paid_join.py), by database. On SQLite: the inbox's look for the event
#: applied before, then its row with the outcome; the payment locked; the order locked,
#: read with its application, tier and the look for a member who has the contact already
#: (one statement); the member number; the payment, its ledger entry, the reference; the
#: member, the membership, the application, the order paid; the groups locked, the
#: invitation, its platform call and seat counter. At the commit: the audit entries in one
#: statement, the events (payment.confirmed, member.admitted) in one more, which says
#: whether any endpoint subscribes (none here), the day's figures (revenue, joined, paid,
#: paying) in one UPSERT. On PostgreSQL the payment's writes, the member's and those that
#: name it are one statement, and the invitation's three another; who the applicant is a
#: member as is read again once the member number's draw has locked the community's row
#: (the same person's other order may have made them a member meanwhile).
ADMISSION_STATEMENTS = {"sqlite": 19, "postgresql": 12}


def test_a_paying_delivery_costs_a_fixed_number_of_statements(app, client, payment_id):
    """Webhooks arrive by the hundred during a launch, each inside the locks that keep member
    numbers and group seats right: a statement more per delivery is felt by everyone."""
    with app.app_context():
        body, headers = signed_notification(db.session.get(Payment, payment_id))
        dialect = db.engine.dialect.name
    statements = _statements_of(app, client, body, headers)
    assert len(statements) == ADMISSION_STATEMENTS[dialect], statements


def _statements_of(app, client, body, headers) -> list[str]:
    """The kind (SELECT, INSERT…) of each statement a delivery runs, answered 200."""
    with statements(app) as seen:
        assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    return [statement.split()[0] for statement in seen]
