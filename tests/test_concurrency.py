"""Member numbers under concurrent payment confirmations, committed for real."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from core.db import db
from core.security import new_token
from membership.cli import seed_demo_community
from membership.models import ContactKind, Invitation, InvitationStatus, Member, Tier
from membership.services import submit_application
from payments import inbox
from payments.models import InboxStatus, LedgerEntry, Order, OrderStatus
from payments.providers import Payer
from payments.services import start_payment
from tests.conftest import fresh_database
from tests.helpers import count, signed_notification

PAYERS = 100


@pytest.mark.committing
def test_parallel_confirmations_get_numbers_1_to_100(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            community = seed_demo_community()
            tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            payments = []
            for i in range(PAYERS):
                application = submit_application(
                    tier,
                    display_name=f"成员{i}",
                    contact_kind=ContactKind.WECHAT,
                    contact_value=f"wx_member{i:03d}",
                    submission_key=new_token(24),
                )
                order = db.session.get(Order, application.order_id)
                payment = start_payment(
                    order, "fake", payer=Payer(), return_url="/", cancel_url="/", actor="prospect"
                )
                payments.append(payment)
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
            labels = db.session.scalars(sa.select(Member.number_label)).all()
            assert len(set(labels)) == PAYERS
            assert count(LedgerEntry) == PAYERS
            paid = db.session.scalars(sa.select(Order.status)).all()
            assert paid == [OrderStatus.PAID] * PAYERS
            issued = db.session.scalars(sa.select(Invitation.status)).all()
            assert issued == [InvitationStatus.ISSUED] * PAYERS
