"""``flask check``: a consistent database passes; one broken on purpose by an UPDATE fails
the check that owns what was broken, names it, and the command exits non-zero."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask_babel import gettext

from core.checks import STUCK_AFTER, run_checks
from core.clock import utcnow
from core.db import db
from core.outbox import MessageKind, OutboxMessage, enqueue
from membership.figures import DailyFigures
from membership.models import Community, Group, PlatformTask
from payments.models import LedgerEntry, Order, OrderStatus, Refund, RefundStatus
from payments.services import request_refund, send_refund
from tests.helpers import pay_through_inbox

PAYERS = 3


@pytest.fixture
def paid(app, demo):
    """Three members paid through the inbox; the first payment refunded in full; a
    message queued."""
    payment = pay_through_inbox(app, PAYERS)[0]
    with app.app_context():
        payment = db.session.merge(payment)
        refund = request_refund(
            payment, payment.money, reason="test", revoke_access=True, actor="staff:1"
        )
        db.session.commit()
        send_refund(refund, actor="staff:1")
        enqueue(MessageKind.NOTICE, [["email", "a@example.com"]], "通知 · Notice", "…")
        db.session.commit()


def _findings(app, now=None) -> dict[str, list[str]]:
    with app.app_context():
        return run_checks(now=now)


def test_a_consistent_database_passes(app, runner, paid):
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(LedgerEntry.id))) == PAYERS + 1
        assert db.session.scalar(sa.select(Refund.status)) is RefundStatus.SUCCEEDED
    assert all(not found for found in _findings(app).values())
    result = runner.invoke(args=["check"])
    assert result.exit_code == 0, result.output
    assert "失败" not in result.output
    assert "项检查全部通过" in result.output


def _first_payment_entry():
    return sa.select(LedgerEntry.id).where(LedgerEntry.kind == "payment").limit(1)


BREAKAGES = {
    "ledger agrees with payments": sa.update(LedgerEntry)
    .where(LedgerEntry.id == _first_payment_entry().scalar_subquery())
    .values(amount=LedgerEntry.amount - 1),
    "ledger agrees with refunds": sa.update(Refund).values(status=RefundStatus.FAILED),
    "ledger entries match their order and currency": sa.update(LedgerEntry)
    .where(LedgerEntry.id == _first_payment_entry().scalar_subquery())
    .values(currency="USD"),
    "order states agree with their payments": sa.update(Order)
    .where(Order.status == OrderStatus.PAID)
    .values(status=OrderStatus.OPEN),
    "member numbers are unique and counted": sa.update(Community).values(last_member_number=1),
    "group seats agree with invitations": sa.update(Group).values(capacity=0),
    "daily figures agree with the rows they count": sa.update(DailyFigures).values(
        joined=DailyFigures.joined + 1
    ),
}


def _execute(app, statement) -> None:
    with app.app_context():
        db.session.execute(statement, execution_options={"synchronize_session": False})
        db.session.commit()


def _fails(app, runner, check: str) -> None:
    """``check`` finds something, and ``flask check`` says so and exits 1."""
    findings = _findings(app)
    assert findings[check], f"{check} found nothing"
    result = runner.invoke(args=["check"])
    assert result.exit_code == 1
    with app.app_context():  # the name as flask check prints it, in QUNMEN_LOCALE
        assert f"失败 {gettext(check)}" in result.output
    assert findings[check][0] in result.output


@pytest.mark.parametrize("check", BREAKAGES)
def test_a_broken_database_fails_the_check_that_owns_it(app, runner, paid, check):
    _execute(app, BREAKAGES[check])
    _fails(app, runner, check)
    # Rows changed around the ORM: the daily figures (checked after every test) follow
    # them once rebuilt.
    assert runner.invoke(args=["figures-rebuild"]).exit_code == 0


def test_a_seat_counter_that_disagrees_fails(app, runner, paid):
    """Put right before the test ends: the suite checks seat counters after every test."""
    _execute(app, sa.update(Group).values(seats_taken=Group.seats_taken + 1))
    try:
        _fails(app, runner, "group seats agree with invitations")
    finally:
        _execute(app, sa.update(Group).values(seats_taken=Group.seats_taken - 1))


def test_queues_not_drained_for_long_are_stuck(app, paid):
    now = utcnow()
    assert not _findings(app, now)["outbox messages are not stuck"]
    later = _findings(app, now + STUCK_AFTER + timedelta(minutes=1))
    with app.app_context():
        pending = db.session.scalar(sa.select(sa.func.count(OutboxMessage.id)))
        tasks = db.session.scalar(sa.select(sa.func.count(PlatformTask.id)))
    assert pending and len(later["outbox messages are not stuck"]) == pending
    assert tasks and len(later["platform tasks are not stuck"]) == tasks
