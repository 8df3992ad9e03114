"""The webhook inbox: every provider notification comes in here, the same way.

Store the raw request and commit it, so that nothing received is lost; verify it; skip it
when the same event was applied before; apply it to the payment under row locks; commit;
then answer. A refused request changes nothing but its own inbox row. A failure on our side
rolls back, is recorded, and answers 5xx so the provider delivers again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from payments.models import InboxStatus, WebhookEvent
from payments.providers import InvalidNotification, get_provider
from payments.services import PaymentMismatch, apply_notification

log = logging.getLogger(__name__)

#: Headers that are never stored: they carry the caller's credentials, not the provider's.
_UNSTORED_HEADERS = {"cookie", "authorization"}


@dataclass(frozen=True, slots=True)
class InboxResult:
    status: InboxStatus
    message: str

    @property
    def accepted(self) -> bool:
        """Whether the provider should consider the delivery done."""
        return self.http_status == 200

    @property
    def http_status(self) -> int:
        return {
            InboxStatus.PROCESSED: 200,
            InboxStatus.DUPLICATE: 200,
            InboxStatus.IGNORED: 200,
            InboxStatus.REJECTED: 400,
        }.get(self.status, 500)


def receive(
    provider_name: str, body: bytes, headers: Mapping[str, str], *, now: datetime | None = None
) -> InboxResult:
    """Store one delivery from ``provider_name`` and process it. Commits."""
    now = now or utcnow()
    event = WebhookEvent(
        provider=provider_name,
        received_at=now,
        headers={k: v for k, v in headers.items() if k.lower() not in _UNSTORED_HEADERS},
        body=body,
        status=InboxStatus.RECEIVED,
    )
    db.session.add(event)
    db.session.commit()
    return process(event, now=now)


def refuse(
    provider_name: str, headers: Mapping[str, str], detail: str, *, now: datetime | None = None
) -> InboxResult:
    """Record a delivery refused before its body was read (too large), for admins to see."""
    now = now or utcnow()
    event = WebhookEvent(
        provider=provider_name,
        received_at=now,
        headers={k: v for k, v in headers.items() if k.lower() not in _UNSTORED_HEADERS},
        body=b"",
        status=InboxStatus.REJECTED,
        detail=detail,
        processed_at=now,
    )
    db.session.add(event)
    db.session.commit()
    return InboxResult(InboxStatus.REJECTED, detail)


def process(event: WebhookEvent, *, now: datetime | None = None) -> InboxResult:
    """Verify and apply a stored delivery (again, when replayed). Commits."""
    now = now or utcnow()
    provider = get_provider(event.provider)
    if provider is None:
        return _finish(event.id, InboxStatus.REJECTED, "provider not enabled", now)
    try:
        notification = provider.parse_notification(
            event.body, event.headers, received_at=event.received_at
        )
    except InvalidNotification as error:
        return _finish(event.id, InboxStatus.REJECTED, str(error), now)

    event.event_id = notification.event_id
    applied_before = db.session.scalar(
        sa.select(WebhookEvent.id).where(
            WebhookEvent.provider == event.provider,
            WebhookEvent.event_id == notification.event_id,
            WebhookEvent.status == InboxStatus.PROCESSED,
            WebhookEvent.id != event.id,
        )
    )
    if applied_before:
        return _finish(event.id, InboxStatus.DUPLICATE, f"applied as event {applied_before}", now)
    try:
        payment, changed = apply_notification(notification, event.provider, now=now)
        event.payment_id = payment.id if payment else None
        if payment is None:
            event.status = InboxStatus.IGNORED
        else:
            event.status = InboxStatus.PROCESSED if changed else InboxStatus.DUPLICATE
        event.processed_at = now
        db.session.commit()
    except PaymentMismatch as error:
        db.session.rollback()
        return _finish(
            event.id, InboxStatus.REJECTED, str(error), now, event_id=notification.event_id
        )
    except Exception as error:
        db.session.rollback()
        log.exception("webhook event %s from %s failed", event.id, event.provider)
        return _finish(
            event.id,
            InboxStatus.FAILED,
            f"{type(error).__name__}: {error}",
            now,
            event_id=notification.event_id,
        )
    return InboxResult(event.status, "ok")


def failed_events() -> list[WebhookEvent]:
    """Deliveries that failed on our side and were not applied since, oldest first."""
    return list(
        db.session.scalars(
            sa.select(WebhookEvent)
            .where(WebhookEvent.status == InboxStatus.FAILED)
            .order_by(WebhookEvent.id)
        )
    )


def replay(event: WebhookEvent, *, now: datetime | None = None) -> InboxResult:
    """Process a failed delivery again, verified as of when it was received. Commits."""
    if event.status is not InboxStatus.FAILED:
        return InboxResult(event.status, "not a failed event")
    return process(event, now=now)


def _finish(
    row_id: int, status: InboxStatus, detail: str, now: datetime, *, event_id: str | None = None
) -> InboxResult:
    """Record how a delivery ended, in a transaction of its own, and the answer to give."""
    event = db.session.get(WebhookEvent, row_id)
    event.status = status
    event.detail = detail[:2000]
    if event_id is not None:
        event.event_id = event_id
    event.processed_at = now
    db.session.commit()
    return InboxResult(status, detail)
