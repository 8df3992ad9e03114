"""The paid join's fast path (membership/paid_join.py) writes what the ORM path writes.

The same deliveries, on the same clock and the same tokens, go into two fresh databases:
one with the fast path, one with ``PAID_JOIN_FAST_PATH`` off. Every row of every table
must come out the same, ids included (both databases start empty and write in the same
order); only what cannot repeat (the raw deliveries' bodies and headers, which carry the
providers' own nonces and timestamps; password hashes, salted) is compared by shape."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from unittest import mock

import pytest
import sqlalchemy as sa

from core import clock
from core.auth import create_staff_user
from core.db import db
from core.events import EVENT_TYPES, WebhookEndpoint
from membership.checks import figures_agree
from membership.cli import seed_demo_community
from membership.models import ContactKind, Group, Invitation, InvitationStatus, Member, Tier
from membership.services import submit_application
from payments import inbox, services
from payments.models import InboxStatus, Order, Payment
from payments.providers import EventKind, Payer
from payments.services import start_payment
from payments.signals import order_paid
from tests import fake_apis
from tests.conftest import fresh_database
from tests.helpers import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    charge,
    checkout_session,
    every_row,
    open_payment,
    signed_notification,
    stripe_delivery,
    wechat_paid,
    wechat_v3_paid,
)

#: Who pays with what, by the settings of the run: (provider, webhook path).
PAYERS = {
    "v2": [
        ("stripe", "/webhooks/stripe"),
        ("wechatpay", "/webhooks/wechatpay"),
        ("fake", "/webhooks/fake"),
        ("wechatpay", "/webhooks/wechatpay"),
    ],
    "v3": [("wechatpay", "/webhooks/wechatpay"), ("stripe", "/webhooks/stripe")],
}
#: A payer in each run paid by JSAPI: the openid the payment was made with.
JSAPI_OPENID = "o_jsapi_payer_0001"


def _prepare(app, providers, now, *, v3: bool):
    """The demo community (its main group with one seat, a second one whose QR expired,
    an endpoint subscribed to every event, an admin to tell), and an application and a
    payment for each of ``providers``, plus one applicant whose contact the first payer
    gives too; the signed deliveries, in order."""
    with app.app_context():
        community = seed_demo_community()
        db.session.add(
            WebhookEndpoint(
                community_id=community.id,
                url="https://receiver.example/events",
                secret="whsec_test",
                event_types=sorted(EVENT_TYPES),
                enabled=True,
                created_at=now,
            )
        )
        create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        (first,) = tier.groups
        first.capacity = 1
        tier.groups.append(
            Group(
                community=community,
                name="主群二",
                platform=first.platform,
                capacity=500,
                qr_mime="image/png",
                qr_expires_at=now - timedelta(days=1),
                created_at=now,
            )
        )
        payments = []
        people = [*range(len(providers)), 0]  # the last one gives the first one's contact
        for (provider, _path), person in zip([*providers, providers[0]], people, strict=True):
            application = submit_application(
                tier,
                display_name=f"成员{len(payments)}",
                contact_kind=ContactKind.WECHAT,
                contact_value=f"wx_payer{person}",
                submission_key=f"key{len(payments)}",
                now=now,
            )
            payments.append(
                start_payment(
                    db.session.get(Order, application.order_id),
                    provider,
                    payer=Payer(),
                    return_url="http://qunmen.test/",
                    cancel_url="http://qunmen.test/",
                    actor="prospect",
                    now=now,
                )
            )
        payments[1].provider_data = {**payments[1].provider_data, "openid": JSAPI_OPENID}
        db.session.commit()
        deliveries = [
            (path, _paid(payment, now, v3))
            for (_provider, path), payment in zip([*providers, providers[0]], payments, strict=True)
        ]
        # Delivered twice; then the first payer's money refunded (the usual path, on rows
        # the fast path wrote).
        deliveries.append(deliveries[0])
        if providers[0][0] == "stripe":
            refunded = charge(payments[0], amount_refunded=payments[0].amount, refunded=True)
            delivery = stripe_delivery("charge.refunded", refunded, timestamp=_stamp(now))
            deliveries.append(("/webhooks/stripe", delivery))
        return deliveries


def _stamp(now: datetime) -> int:
    return int(now.timestamp())


def _paid(payment: Payment, now: datetime, v3: bool) -> tuple[bytes, dict[str, str]]:
    if payment.provider == "stripe":
        return stripe_delivery(
            "checkout.session.completed", checkout_session(payment), timestamp=_stamp(now)
        )
    if payment.provider == "fake":
        return signed_notification(payment, EventKind.PAYMENT_SUCCEEDED, now=now)
    return wechat_v3_paid(payment) if v3 else (wechat_paid(payment), {"Content-Type": "text/xml"})


def _deliver(app, deliveries) -> None:
    client = app.test_client()
    for path, (body, headers) in deliveries:
        response = client.post(path, data=body, headers=headers)
        assert response.status_code in (200, 204), response.get_data(as_text=True)


@pytest.mark.committing
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_the_fast_path_writes_every_row_the_orm_path_writes(
    tmp_path, _api_server, repeatable, monkeypatch, version
):
    """A paid join of a newcomer by Stripe, WeChat Pay (v2 or v3, one paid by JSAPI) and
    the fake provider, one of them seated behind an expired QR code (admins told), and
    around them the usual path's cases (an applicant who is a member already, a delivery
    made twice, a refund): the two paths leave the same rows behind."""
    now, reset_tokens = repeatable
    state, _certs = _api_server
    providers = PAYERS[version]
    settings = fake_apis.wechatpay_v3_settings(state.base_url) if version == "v3" else {}
    fast_applied = []
    runs = {}
    for fast in (True, False):
        reset_tokens()
        state.reset()
        folder = tmp_path / ("fast" if fast else "orm")
        folder.mkdir()
        with fresh_database(folder, _api_server, PAID_JOIN_FAST_PATH=fast, **settings) as app:
            (registered,) = services._FAST_PATHS

            def counting(*args, registered=registered):
                payment_id = registered(*args)
                fast_applied.append(payment_id)
                return payment_id

            monkeypatch.setattr(services, "_FAST_PATHS", [counting])
            _deliver(app, _prepare(app, providers, now, v3=version == "v3"))
            runs[fast] = every_row(app)
    # Every newcomer took the fast path; the rest (a member already, the duplicate
    # delivery never reached it, the refund) the usual one.
    assert len([p for p in fast_applied if p is not None]) == len(providers)
    assert runs[True].keys() == runs[False].keys()
    for table in runs[True]:
        assert runs[True][table] == runs[False][table], table
    assert runs[True]["members"] and runs[True]["webhook_deliveries"]
    assert runs[True]["outbox_messages"]  # the admin told of the expired QR code


#: Payers at once, and the seats their tier's one group has.
RUSH, SEATS = 20, 5


@pytest.mark.committing
def test_payers_at_once_take_the_seats_there_are_and_numbers_1_to_n(tmp_path, _api_server):
    """Twenty newcomers' payments delivered at once on parallel connections, for a group
    of five seats: all admitted by the fast path, numbered 1 to 20 with no gap, five
    seated and fifteen waiting, the seat counter at five."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            (group,) = tier.groups
            group.capacity = SEATS
            payments = [open_payment(tier, "fake", person) for person in range(RUSH)]
            db.session.commit()
            deliveries = [signed_notification(payment) for payment in payments]
            group_id = group.id
        (registered,) = services._FAST_PATHS
        applied = []

        def counting(*args):
            payment_id = registered(*args)
            applied.append(payment_id)
            return payment_id

        start = threading.Barrier(RUSH)

        def deliver(delivery):
            start.wait()
            with app.app_context():
                return inbox.receive("fake", *delivery).status

        with (
            mock.patch.object(services, "_FAST_PATHS", [counting]),
            ThreadPoolExecutor(max_workers=RUSH) as pool,
        ):
            results = list(pool.map(deliver, deliveries))
        assert results == [InboxStatus.PROCESSED] * RUSH
        assert None not in applied and len(applied) == RUSH
        with app.app_context():
            numbers = db.session.scalars(sa.select(Member.number)).all()
            assert sorted(numbers) == list(range(1, RUSH + 1))
            statuses = db.session.scalars(sa.select(Invitation.status)).all()
            assert statuses.count(InvitationStatus.ISSUED) == SEATS
            assert statuses.count(InvitationStatus.WAITING) == RUSH - SEATS
            assert db.session.get(Group, group_id).seats_taken == SEATS
            assert list(figures_agree(clock.utcnow())) == []


def test_the_fast_path_stands_in_for_every_order_paid_receiver(app):
    """The fast path does what the ``order_paid`` receivers would do without calling them:
    a receiver added must be weighed there first (see membership/paid_join.py)."""
    receivers = {receiver.__qualname__ for receiver in order_paid.receivers_for(object())}
    assert receivers == {
        "admit_paid_application",
        "consume_paid_coupon",
        "activate_paid_enrolment",
    }
