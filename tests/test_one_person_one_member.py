"""One person, one member: two join applications of one contact paid at the same moment
(a second try after the first payment seemed lost, say) make one member with one number,
as they do one after the other; the second order is put before the admins to refund."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from core.db import db
from membership.cli import seed_demo_community
from membership.models import Community, Member, Membership, Tier
from payments import inbox
from payments.models import FlagKind, InboxStatus, OrderFlag, Payment, PaymentStatus
from tests.conftest import fresh_database
from tests.helpers import open_payment, signed_notification


@pytest.mark.committing
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "ORM path"])
@pytest.mark.parametrize("at_once", [True, False], ids=["at once", "one after the other"])
def test_two_paid_applications_of_one_contact_make_one_member(
    tmp_path, _api_server, fast_path, at_once
):
    with fresh_database(tmp_path, _api_server, PAID_JOIN_FAST_PATH=fast_path) as app:
        with app.app_context():
            seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            # The same person (contact wx_member000007) applies twice and pays both.
            payments = [open_payment(tier, "fake", 7), open_payment(tier, "fake", 7)]
            db.session.commit()
            deliveries = [signed_notification(payment) for payment in payments]

        start = threading.Barrier(2)

        def deliver(delivery: tuple[bytes, dict[str, str]]) -> InboxStatus:
            if at_once:
                start.wait()
            with app.app_context():
                return inbox.receive("fake", *delivery).status

        with ThreadPoolExecutor(max_workers=2 if at_once else 1) as pool:
            results = list(pool.map(deliver, deliveries))

        assert results == [InboxStatus.PROCESSED] * 2
        with app.app_context():
            assert db.session.execute(sa.select(Member.number)).scalars().all() == [1]
            # A number drawn for the second payer and not needed was given back.
            assert db.session.scalar(sa.select(Community.last_member_number)) == 1
            assert len(db.session.scalars(sa.select(Membership)).all()) == 1
            statuses = db.session.scalars(sa.select(Payment.status)).all()
            assert statuses == [PaymentStatus.CONFIRMED] * 2
            flags = db.session.scalars(sa.select(OrderFlag.kind)).all()
            assert flags == [FlagKind.BOUGHT_TWICE]
