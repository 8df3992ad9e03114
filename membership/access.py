"""The queue of platform calls: grants and revokes of group access, made by the worker
after the commit that decided them, with retries and backoff.

A task is claimed (its next attempt pushed out by a lease) and committed before the
platform is called, so no database lock is held while a platform answers and two workers
never call for the same task at once.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from functools import partial

import sqlalchemy as sa
from flask import Flask

from core import audit
from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects
from core.outbox import drain_outbox
from core.webhooks_out import drain_webhooks
from membership.models import (
    Invitation,
    PlatformTask,
    RemovalTask,
    TaskAction,
    TaskStatus,
)
from membership.platforms import WECOM, PlatformError, adapter_for

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
LEASE = timedelta(minutes=2)


def queue_platform_task(invitation: Invitation, action: TaskAction, *, now: datetime) -> None:
    """Queue a grant or revoke for ``invitation`` (flushed with the caller's change)."""
    db.session.add(
        PlatformTask(
            invitation=invitation,
            action=action,
            status=TaskStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


def queue_group_task(
    action: TaskAction, *, chat_id: str | None = None, now: datetime
) -> PlatformTask:
    """Queue a task about a whole group (``chat_id``) or every group rather than one
    invitation: a WeCom group's members read again, or all of them (added, not flushed)."""
    task = PlatformTask(
        action=action,
        chat_id=chat_id,
        status=TaskStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    db.session.add(task)
    return task


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))


def _claim(now: datetime) -> int | None:
    task = db.session.scalar(
        sa.select(PlatformTask)
        .where(PlatformTask.status == TaskStatus.PENDING, PlatformTask.next_attempt_at <= now)
        .order_by(PlatformTask.next_attempt_at, PlatformTask.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if task is None:
        db.session.commit()
        return None
    task.attempts += 1
    task.next_attempt_at = now + LEASE
    task_id = task.id
    db.session.commit()
    return task_id


def run_task(task_id: int, *, now: datetime) -> TaskStatus:
    """Make one claimed task's platform call and record the outcome. Commits."""
    task = db.session.get(PlatformTask, task_id)
    invitation = task.invitation
    if invitation is None:  # a whole group's task: WeCom's, the one platform that has them
        adapter = adapter_for(WECOM)
        call = {
            TaskAction.SYNC: partial(adapter.sync_chat, task.chat_id),
            TaskAction.RECONCILE: adapter.reconcile,
        }[task.action]
    else:
        group = invitation.group  # loaded now: the adapter reads it with no transaction open
        adapter = adapter_for(group.platform if group else "")
        call = partial(
            {
                TaskAction.GRANT: adapter.grant,
                TaskAction.ADMIT: adapter.admit,
                TaskAction.REVOKE: adapter.revoke,
            }[task.action],
            invitation,
        )
    end_transaction_keeping_objects()
    try:
        call(now=now)
    except (PlatformError, OSError) as error:
        db.session.rollback()
        task = db.session.get(PlatformTask, task_id)
        task.last_error = str(error)[:500]
        if task.attempts >= MAX_ATTEMPTS:
            task.status = TaskStatus.FAILED
            audit.record("platform_task.failed", task, actor="system", data={"error": str(error)})
        else:
            task.next_attempt_at = now + _backoff(task.attempts)
        log.warning("platform task %s failed (attempt %s): %s", task_id, task.attempts, error)
    else:
        task.status = TaskStatus.DONE
        task.done_at = now
        task.last_error = None
    db.session.commit()
    return task.status


def drain(*, now: datetime | None = None, limit: int = 100) -> int:
    """Run the due tasks, up to ``limit``. Returns how many were run."""
    ran = 0
    while ran < limit:
        moment = now or utcnow()
        task_id = _claim(moment)
        if task_id is None:
            break
        run_task(task_id, now=moment)
        ran += 1
    return ran


def retry(task: PlatformTask, *, actor: str, now: datetime | None = None) -> None:
    """An admin puts a failed task back in the queue."""
    now = now or utcnow()
    task.status, task.attempts, task.next_attempt_at = TaskStatus.PENDING, 0, now
    audit.record("platform_task.retried", task, actor=actor, now=now)


def complete_removal(task: RemovalTask, *, actor: str, now: datetime | None = None) -> bool:
    """A moderator removed the member from the group by hand."""
    if task.done_at is not None:
        return False
    task.done_at, task.done_by = now or utcnow(), actor
    audit.record("removal.done", task, actor=actor, now=task.done_at)
    return True


def start_in_process_worker(app: Flask, interval: float = 5.0) -> None:
    """Drain the queue from a thread of this process (the embedded default: the demo
    needs no second process). Started on the first request."""
    started = threading.Event()

    def loop() -> None:
        while True:
            try:
                with app.app_context():
                    drain()
                    drain_outbox()
                    drain_webhooks()
            except Exception:  # the thread must outlive any one failure
                log.exception("in-process queue worker")
            time.sleep(interval)

    @app.before_request
    def _start() -> None:
        if not started.is_set():
            started.set()
            threading.Thread(target=loop, name="qunmen-queue", daemon=True).start()
