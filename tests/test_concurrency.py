"""Member numbers under concurrent payment confirmations, committed for real."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server

from core.db import db
from core.limits import AttemptCounter
from core.outbox import OutboxMessage
from membership.cli import seed_demo_community
from membership.models import (
    Application,
    Group,
    Invitation,
    InvitationStatus,
    LoginCode,
    Member,
    Membership,
    MembershipStatus,
    Tier,
)
from membership.services import JOIN_SUBMISSIONS
from payments import inbox
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
from payments.providers import Payer
from payments.services import start_payment
from tests.conftest import fresh_database
from tests.helpers import (
    PROSPECT,
    checkout_session,
    count,
    hidden_value,
    open_payment,
    signed_notification,
    stripe_delivery,
    wechat_paid,
    wechat_refunded,
)

PAYERS = 100


@pytest.mark.committing
def test_parallel_confirmations_get_numbers_1_to_100(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            community = seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            payments = []
            for i in range(PAYERS):
                payments.append(open_payment(tier, "fake", i))
            db.session.commit()
            deliveries = [signed_notification(payment) for payment in payments]
            community_id = community.id

        start = threading.Barrier(PAYERS)

        def deliver(delivery: tuple[bytes, dict[str, str]]) -> InboxStatus:
            start.wait()  # all at once
            with app.app_context():
                return inbox.receive("fake", *delivery).status

        with ThreadPoolExecutor(max_workers=PAYERS) as pool:
            results = list(pool.map(deliver, deliveries))

        assert results == [InboxStatus.PROCESSED] * PAYERS
        with app.app_context():
            numbers = db.session.scalars(
                sa.select(Member.number).where(Member.community_id == community_id)
            ).all()
            assert sorted(numbers) == list(range(1, PAYERS + 1))
            labels = db.session.scalars(sa.select(Member.number_label).order_by(Member.id)).all()
            assert len(set(labels)) == PAYERS
            assert count(LedgerEntry) == PAYERS
            paid = db.session.scalars(sa.select(Order.status).order_by(Order.id)).all()
            assert paid == [OrderStatus.PAID] * PAYERS
            issued = db.session.scalars(sa.select(Invitation.status).order_by(Invitation.id)).all()
            assert issued == [InvitationStatus.ISSUED] * PAYERS
            # The seat counters moved once per admission, under the group's lock.
            counted: dict[int, int] = {}
            for group_id in db.session.scalars(sa.select(Invitation.group_id)):
                counted[group_id] = counted.get(group_id, 0) + 1
            counters = dict(db.session.execute(sa.select(Group.id, Group.seats_taken)).all())
            assert {g: counters[g] for g in counted} == counted
            assert sum(counters.values()) == PAYERS


def _serve(app):
    """The app on a real loopback HTTP server, one thread per connection."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _post_all(url: str, body: bytes, headers: dict[str, str], times: int) -> list[int]:
    """``times`` deliveries of the same body at once, each on its own connection."""
    start = threading.Barrier(times)

    def post(_):
        start.wait()
        return requests.post(
            url, data=body, headers={**headers, "Host": "qunmen.test"}, timeout=60
        ).status_code

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(post, range(times)))


def _one_paid_payment(app, provider: str):
    with app.app_context():
        seed_demo_community()
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payment = open_payment(tier, provider, 0)
        db.session.commit()
        if provider == "stripe":
            return stripe_delivery(
                "checkout.session.completed", checkout_session(payment), event_id="evt_fifty"
            )
        return wechat_paid(payment), {"Content-Type": "text/xml"}


@pytest.mark.committing
@pytest.mark.parametrize("provider", ["stripe", "wechatpay"])
def test_fifty_concurrent_deliveries_of_one_event(tmp_path, _api_server, provider):
    """The same event 50 times at once on parallel connections: every delivery answered
    success, and one confirmed payment, membership, number, invitation, ledger entry."""
    with fresh_database(tmp_path, _api_server) as app:
        body, headers = _one_paid_payment(app, provider)
        server, base = _serve(app)
        try:
            statuses = _post_all(f"{base}/webhooks/{provider}", body, headers, 50)
        finally:
            server.shutdown()
        assert statuses == [200] * 50
        with app.app_context():
            assert db.session.scalars(sa.select(Payment.status).order_by(Payment.id)).all() == [
                PaymentStatus.CONFIRMED
            ]
            assert db.session.scalars(sa.select(Member.number)).all() == [1]
            assert count(Membership) == 1
            assert count(Invitation) == 1
            assert count(LedgerEntry) == 1
            inbox_statuses = db.session.scalars(sa.select(WebhookEvent.status)).all()
            assert inbox_statuses.count(InboxStatus.PROCESSED) == 1
            # Those that came after it was applied were answered from a read, unstored;
            # those that raced it were stored as duplicates.
            assert set(inbox_statuses) <= {InboxStatus.PROCESSED, InboxStatus.DUPLICATE}


@pytest.mark.committing
def test_a_sqlite_transaction_waits_its_turn_for_the_write_lock(tmp_path, _api_server, monkeypatch):
    """Another transaction holding SQLite's write lock makes a new one wait, not fail;
    past the wait it fails with the database's usual error (a 503 for a webhook)."""
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("SQLite's write lock")
        engine, waited = db.engine, []

        def transaction() -> None:
            start = time.monotonic()
            try:
                with engine.begin() as connection:
                    connection.execute(sa.select(1))
                waited.append(time.monotonic() - start)
            except OperationalError as error:
                waited.append(error)

        with engine.connect() as holder:
            holder.begin()  # BEGIN IMMEDIATE: the write lock is held until the rollback
            waiter = threading.Thread(target=transaction)
            waiter.start()
            time.sleep(0.3)
            holder.rollback()
            waiter.join()
            assert 0.25 < waited[0] < 5

            monkeypatch.setattr("core.db.SQLITE_LOCK_WAIT_SECONDS", 0.2)
            holder.begin()
            start = time.monotonic()
            transaction()
            assert isinstance(waited[1], OperationalError)
            assert 0.2 <= time.monotonic() - start < 2
            holder.rollback()


def _order_with_two_wechat_payments(app) -> list[Payment]:
    """One order the payer tried to pay twice: a Native QR code and H5 (app context)."""
    seed_demo_community()
    tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
    first = open_payment(tier, "wechatpay", 0)
    db.session.flush()
    phone = Payer(user_agent="Mozilla/5.0 (Linux; Android 13) Mobile Safari/537.36")
    second = start_payment(
        first.order, "wechatpay", payer=phone, return_url="/", cancel_url="/", actor="prospect"
    )
    db.session.commit()
    assert (first.method, second.method) == ("native", "mweb")
    return [first, second]


def _post_each(url: str, bodies: list[bytes]) -> list[int]:
    """Each body posted at the same moment, on a connection of its own."""
    start = threading.Barrier(len(bodies))

    def post(body):
        start.wait()
        headers = {"Content-Type": "text/xml", "Host": "qunmen.test"}
        return requests.post(url, data=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(post, bodies))


@pytest.mark.committing
def test_two_payments_of_one_order_confirmed_and_taken_back_at_once(tmp_path, _api_server):
    """Both attempts of one order confirmed at the same moment: one membership, one
    number, the later one flagged as the surplus. Then both refunded at the same moment:
    whichever refund comes second sees the first, and access ends."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            payments = _order_with_two_wechat_payments(app)
            paid = [wechat_paid(p) for p in payments]
            refunded = [wechat_refunded(p, p.amount, f"at-provider-{p.id}") for p in payments]
        server, base = _serve(app)
        try:
            assert _post_each(f"{base}/webhooks/wechatpay", paid) == [200, 200]
            with app.app_context():
                assert db.session.scalars(sa.select(Member.number)).all() == [1]
                assert count(Membership) == 1
                assert db.session.scalars(sa.select(OrderFlag.kind)).all() == [FlagKind.PAID_TWICE]
                assert db.session.scalar(sa.select(Order.status)) is OrderStatus.PAID
            assert _post_each(f"{base}/webhooks/wechatpay", refunded) == [200, 200]
        finally:
            server.shutdown()
        with app.app_context():
            assert db.session.scalar(sa.select(Order.status)) is OrderStatus.REFUNDED
            assert db.session.scalar(sa.select(Membership.status)) is MembershipStatus.ENDED
            assert db.session.scalars(sa.select(Invitation.status)).all() == [
                InvitationStatus.REVOKED
            ]


def _opened_join_form(base: str, phone: str) -> tuple[requests.Session, dict[str, str]]:
    """A prospect's join form, opened in a browser session of its own and filled in."""
    browser = requests.Session()
    browser.headers["Host"] = "qunmen.test"
    page = browser.get(f"{base}/join/demo/main", timeout=60).text
    hidden = {name: hidden_value(page, name) for name in ("csrf_token", "submission_key")}
    return browser, {**hidden, **PROSPECT, "contact_value": phone}


def _send_all(base: str, forms: list[tuple[requests.Session, dict[str, str]]]) -> list[int]:
    """Every form sent at once, each on its own connection."""
    start = threading.Barrier(len(forms))

    def send(form) -> int:
        browser, fields = form
        start.wait()
        return browser.post(
            f"{base}/join/demo/main", data=fields, allow_redirects=False, timeout=60
        ).status_code

    with ThreadPoolExecutor(max_workers=len(forms)) as pool:
        return list(pool.map(send, forms))


@pytest.mark.committing
@pytest.mark.parametrize("sends", [3, 10])
def test_a_join_form_sent_again_at_once_makes_one_order_and_one_code(tmp_path, _api_server, sends):
    """One form sent several times at once (a double click, or worse): one application
    and one order; one code, from the request that made the application. Up to the
    contact's three code requests that code always goes; past them the request that made
    the application may be the one refused (it says so), so at most one."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        server, base = _serve(app)
        try:
            form = _opened_join_form(base, "13900000001")
            statuses = _send_all(base, [form] * sends)
        finally:
            server.shutdown()
        assert statuses == [302] * sends
        with app.app_context():
            assert count(Application) == count(Order) == 1
            codes = count(LoginCode)
            assert count(OutboxMessage) == codes
            assert codes == 1 if sends <= 3 else codes <= 1


@pytest.mark.committing
def test_parallel_joins_from_one_client_take_no_more_than_its_limit(tmp_path, _api_server):
    """One client's join forms at once, past its limit: the claims (join and code
    request, one statement) queue on their counters, so exactly the limit go through."""
    per_client, _overall = JOIN_SUBMISSIONS
    tries = per_client.tries + 8
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        server, base = _serve(app)
        try:
            forms = [_opened_join_form(base, f"139{i:08d}") for i in range(tries)]
            statuses = _send_all(base, forms)
        finally:
            server.shutdown()
        assert sorted(statuses) == [302] * per_client.tries + [429] * 8
        with app.app_context():
            assert count(Application) == count(LoginCode) == per_client.tries
            counter = db.session.get(AttemptCounter, f"{per_client.name}:127.0.0.1")
            assert counter.count == tries
