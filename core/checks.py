"""Consistency checks over the whole database: ``flask check``.

Each package registers the checks of what it owns with :func:`consistency_check` (core:
the outbox; ``payments``: the ledger against orders, payments, refunds and disputes;
``membership``: member numbers, group seats, platform tasks), and ``flask check`` runs
them all, prints each finding and exits non-zero when any check found something. A check
reads and never writes: it is run after the concurrency tests, after a restore from a
dump, and by operators whenever they doubt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import click
import sqlalchemy as sa
from flask.cli import with_appcontext
from flask_babel import gettext as _

from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage, OutboxStatus

#: A check: given the time, the findings (one sentence each); none when all is well.
Check = Callable[[datetime], Iterable[str]]

#: An open message or task due longer ago than this is stuck: no worker is draining the
#: queue (a claim's lease is two minutes, a healthy worker looks every few seconds).
STUCK_AFTER = timedelta(minutes=15)

_checks: dict[str, Check] = {}


def consistency_check(name: str) -> Callable[[Check], Check]:
    """Register the decorated function as the check ``name`` (at import time; ``app.py``
    imports each package's checks)."""

    def register(check: Check) -> Check:
        _checks[name] = check
        return check

    return register


def run_checks(*, now: datetime | None = None) -> dict[str, list[str]]:
    """Every registered check's findings, by name, in registration order."""
    now = now or utcnow()
    return {name: list(check(now)) for name, check in _checks.items()}


@consistency_check("outbox messages are not stuck")
def outbox_not_stuck(now: datetime) -> Iterable[str]:
    """Messages still pending or sending long after they were due."""
    stuck = db.session.execute(
        sa.select(OutboxMessage.id, OutboxMessage.status, OutboxMessage.next_attempt_at).where(
            OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING]),
            OutboxMessage.next_attempt_at < now - STUCK_AFTER,
        )
    )
    for message_id, status, due in stuck:
        yield f"message {message_id} is {status}, due since {due:%Y-%m-%d %H:%M} UTC"


@click.command("check")
@with_appcontext
def check_command() -> None:
    """Check the database's consistency: ledger against orders, payments and refunds;
    member numbers; seats against invitations; queues not stuck. Exits 1 on a finding."""
    failed = 0
    marks = {True: _("FAIL"), False: _("ok")}
    for name, findings in run_checks().items():
        # A check's name is a message id too (bin/translations extracts consistency_check).
        click.echo(f"{marks[bool(findings)]} {_(name)}")
        for finding in findings:
            click.echo(f"     - {finding}")
        failed += bool(findings)
    db.session.rollback()
    if failed:
        raise click.ClickException(
            _("%(failed)s of %(total)s checks failed", failed=failed, total=len(_checks))
        )
    click.echo(_("All %(total)s checks passed", total=len(_checks)))
