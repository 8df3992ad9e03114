"""The webhook inbox: every provider notification comes in here, the same way.

Each delivery is verified as it arrives. A genuine one is stored raw; its payment
identified (asking the provider, with the raw delivery committed first, when the event
names only the provider's id for a payment we have not heard of); skipped when the same
event was applied before; applied to the payment under row locks; and committed together
with its inbox row, before the provider gets its answer. One transaction on the usual
path: the raw row and the state it caused are committed at once. When applying fails, the
transaction is rolled back and the raw delivery is stored alone, marked rejected (4xx) or
failed (5xx, so the provider delivers again, or an admin replays it); a delivery left
unfinished by a process that stopped is replayed with the failed ones. Nothing genuine
received is lost, nothing is half-written.

A refused delivery (forged, malformed, too large) changes nothing and costs little: it is
kept for admins with its body cut to a few KB, and only so many per client a minute;
past that it is refused unrecorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import inspect

from core.clock import utcnow
from core.db import db, take_write_lock
from core.limits import Limit, TooManyTries, claim
from payments.models import InboxStatus, WebhookEvent
from payments.providers import (
    InvalidNotification,
    Notification,
    PaymentProvider,
    ProviderError,
    get_provider,
)
from payments.services import (
    NotOurPayment,
    PaymentMismatch,
    apply_notification,
    apply_notification_fast,
    identify_payment,
)

log = logging.getLogger(__name__)

#: Headers that are never stored: they carry the caller's credentials, not the provider's.
_UNSTORED_HEADERS = {"cookie", "authorization"}
#: How much of a refused delivery is kept: enough to see what it was.
REFUSED_BODY_BYTES = 4096
REFUSED_HEADERS = 40
REFUSED_HEADER_CHARS = 256
#: Refused deliveries recorded per client network; past this they are refused unrecorded.
REFUSED_RECORDED = Limit("webhook-refused", 30, timedelta(minutes=1))


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
    provider_name: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    client: str = "local",
    community_id: int | None = None,
    now: datetime | None = None,
) -> InboxResult:
    """Verify one delivery from ``provider_name`` (sent from the network ``client``) with
    the keys of ``community_id``, whose URL it came to (None: the install's); store and
    apply a genuine one, record a refused one with :func:`refuse`. Commits."""
    now = now or utcnow()
    refused = {"client": client, "community_id": community_id, "now": now}
    try:
        provider = get_provider(provider_name, community_id)
    except ProviderError as error:
        # The community's keys are broken on our side: kept whole, to replay once fixed.
        log.error("webhook from %s for community %s: %s", provider_name, community_id, error)
        take_write_lock()
        event = WebhookEvent(
            provider=provider_name,
            community_id=community_id,
            received_at=now,
            headers=_stored_headers(headers),
            body=body,
        )
        return _finish(event, InboxStatus.FAILED, str(error), now)
    if provider is None:
        return refuse(provider_name, headers, "provider not enabled", **refused)
    try:
        notification, own_keys = _verified(provider, community_id, body, headers, now)
    except InvalidNotification as error:
        return refuse(provider_name, headers, str(error), body=body, **refused)
    applied_before = db.session.connection().scalar(
        _APPLIED_BEFORE,
        {"provider": provider_name, "event_id": notification.event_id, "this": 0},
    )
    if applied_before:
        # Delivered again (our answer was lost, or the provider retries): answered from
        # that one read, and nothing is stored; the delivery that was applied is kept.
        log.info("webhook from %s: event %s again", provider_name, notification.event_id)
        return InboxResult(InboxStatus.DUPLICATE, f"applied as event {applied_before}")
    # A read transaction (SQLite, a web request) ended here: look again under the lock.
    look_again = take_write_lock()
    event = WebhookEvent(
        provider=provider_name,
        community_id=community_id,
        received_at=now,
        headers=_stored_headers(headers),
        body=body,
        status=InboxStatus.RECEIVED,
    )
    return _apply(event, notification, own_keys, now, looked=not look_again)


def refuse(
    provider_name: str,
    headers: Mapping[str, str],
    detail: str,
    *,
    body: bytes = b"",
    client: str = "local",
    community_id: int | None = None,
    now: datetime | None = None,
) -> InboxResult:
    """Answer a delivery (to the URL of ``community_id``, None: the install's) refused
    before anything was applied (forged, malformed, too large). It is recorded for admins
    to see, cut to :data:`REFUSED_BODY_BYTES` and a few short headers, unless ``client``
    had more than :data:`REFUSED_RECORDED` refused already; then it is only counted.
    Commits."""
    now = now or utcnow()
    take_write_lock()
    try:
        claim([(REFUSED_RECORDED, client)], now=now)
    except TooManyTries:
        db.session.commit()
        return InboxResult(InboxStatus.REJECTED, detail)
    if len(body) > REFUSED_BODY_BYTES:
        detail = f"{detail} (body of {len(body)} bytes, the first {REFUSED_BODY_BYTES} kept)"
    kept = list(_stored_headers(headers).items())[:REFUSED_HEADERS]
    event = WebhookEvent(
        provider=provider_name,
        community_id=community_id,
        received_at=now,
        headers={name: value[:REFUSED_HEADER_CHARS] for name, value in kept},
        body=body[:REFUSED_BODY_BYTES],
    )
    return _finish(event, InboxStatus.REJECTED, detail, now)


def process(event: WebhookEvent, *, now: datetime | None = None) -> InboxResult:
    """Verify and apply a stored delivery again (a replay), with the keys of the community
    whose URL it came to. Commits."""
    now = now or utcnow()
    try:
        provider = get_provider(event.provider, event.community_id)
    except ProviderError as error:
        return _finish(event, InboxStatus.FAILED, str(error), now)
    if provider is None:
        return _finish(event, InboxStatus.REJECTED, "provider not enabled", now)
    try:
        notification, own_keys = _verified(
            provider, event.community_id, event.body, event.headers, event.received_at
        )
    except InvalidNotification as error:
        return _finish(event, InboxStatus.REJECTED, str(error), now)
    return _apply(event, notification, own_keys, now)


def _verified(
    provider: PaymentProvider,
    community_id: int | None,
    body: bytes,
    headers: Mapping[str, str],
    received_at: datetime,
) -> tuple[Notification, bool]:
    """A delivery to the URL of ``community_id`` verified and parsed by ``provider``, the
    one that community uses; and whether that was with the community's own keys. At a
    community's URL the install's keys are tried second: payments the community made with
    them before it took its own account are still notified, signed by them (the payment
    must then be one made with the install's keys: see
    :func:`payments.services.apply_notification`). Raises :class:`InvalidNotification`
    when neither verifies it."""
    install = get_provider(provider.name)
    try:
        notification = provider.parse_notification(body, headers, received_at=received_at)
    except InvalidNotification:
        if community_id is None or install is None or install is provider:
            raise
        return install.parse_notification(body, headers, received_at=received_at), False
    return notification, provider is not install


def _stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _UNSTORED_HEADERS}


_EVENTS = WebhookEvent.__table__
#: Built once: every delivery runs it (on the session's connection: a read of one column
#: needs none of the ORM's handling).
_APPLIED_BEFORE = sa.select(_EVENTS.c.id).where(
    _EVENTS.c.provider == sa.bindparam("provider"),
    _EVENTS.c.event_id == sa.bindparam("event_id"),
    _EVENTS.c.status == InboxStatus.PROCESSED,
    _EVENTS.c.id != sa.bindparam("this"),
)


def _apply(
    event: WebhookEvent,
    notification: Notification,
    own_keys: bool,
    now: datetime,
    *,
    looked: bool = False,
) -> InboxResult:
    """Apply a verified delivery, ``event`` (new, or stored before and replayed; verified
    with its community's own keys or not, ``own_keys``): identify its payment, skip a
    duplicate (unless the caller ``looked`` for one in this transaction), apply it, and
    store the delivery with how it ended. Commits."""
    event.event_id = notification.event_id
    if notification.payment_public_id is None and notification.payment_external_id:
        # The provider may be asked whose payment this is, with the delivery committed.
        db.session.add(event)
    try:
        notification = identify_payment(
            notification, event.provider, event.community_id if own_keys else None
        )
    except ProviderError as error:
        log.warning("webhook from %s: payment not identified: %s", event.provider, error)
        return _finish(_rolled_back(event), InboxStatus.FAILED, str(error), now)
    applied_before = not looked and db.session.connection().scalar(
        _APPLIED_BEFORE,
        {"provider": event.provider, "event_id": notification.event_id, "this": event.id or 0},
    )
    if applied_before:
        return _finish(event, InboxStatus.DUPLICATE, f"applied as event {applied_before}", now)
    try:
        where = {"community_id": event.community_id, "own_keys": own_keys, "now": now}
        # The common case (a payer admitted) by statements built once; the rest as usual.
        payment_id = apply_notification_fast(notification, event.provider, **where)
        if payment_id is not None:
            status = InboxStatus.PROCESSED
        else:
            payment, changed = apply_notification(notification, event.provider, **where)
            payment_id = payment.id if payment else None
            if payment is None:
                status = InboxStatus.IGNORED
            else:
                status = InboxStatus.PROCESSED if changed else InboxStatus.DUPLICATE
        event.payment_id = payment_id
        event.status = status
        event.processed_at = now
        _store(event)
        db.session.commit()
    except NotOurPayment as error:
        return _finish(_rolled_back(event), InboxStatus.IGNORED, str(error), now)
    except PaymentMismatch as error:
        return _finish(_rolled_back(event), InboxStatus.REJECTED, str(error), now)
    except Exception as error:
        log.exception("webhook event %s from %s failed", notification.event_id, event.provider)
        detail = f"{type(error).__name__}: {error}"
        return _finish(_rolled_back(event), InboxStatus.FAILED, detail, now)
    # Not event.status: reading it after the commit would load the row again.
    return InboxResult(status, "ok")


#: A delivery still marked received this long after it came was cut off half-way: the
#: process stopped after storing it (it asks the provider with the delivery committed).
STALLED_AFTER = timedelta(minutes=10)


def needs_replay(now: datetime) -> sa.ColumnElement[bool]:
    """SQL: the delivery failed on our side, or was left unfinished (see
    :data:`STALLED_AFTER`), and was not applied since."""
    return sa.or_(
        WebhookEvent.status == InboxStatus.FAILED,
        sa.and_(
            WebhookEvent.status == InboxStatus.RECEIVED,
            WebhookEvent.received_at < now - STALLED_AFTER,
        ),
    )


def failed_events(*, now: datetime | None = None) -> list[WebhookEvent]:
    """Deliveries that need replaying (:func:`needs_replay`), oldest first."""
    select = sa.select(WebhookEvent).where(needs_replay(now or utcnow()))
    return list(db.session.scalars(select.order_by(WebhookEvent.id)))


def replay(event: WebhookEvent, *, now: datetime | None = None) -> InboxResult:
    """Process a failed or unfinished delivery again, verified as of when it was received.
    Commits."""
    now = now or utcnow()
    waiting = sa.select(WebhookEvent.id).where(WebhookEvent.id == event.id, needs_replay(now))
    if db.session.scalar(waiting) is None:
        return InboxResult(event.status, "not a failed or unfinished event")
    return process(event, now=now)


def _rolled_back(event: WebhookEvent) -> WebhookEvent:
    """Roll back what applying ``event`` changed; the delivery itself, to be stored alone
    (a new row if it had not been committed before, else its committed row)."""
    fields = {
        "provider": event.provider,
        "community_id": event.community_id,
        "received_at": event.received_at,
        "headers": event.headers,
        "body": event.body,
        "event_id": event.event_id,
    }
    persisted_id = inspect(event).identity[0] if inspect(event).has_identity else None
    db.session.rollback()
    stored = db.session.get(WebhookEvent, persisted_id) if persisted_id else None
    if stored is None:
        stored = WebhookEvent(**fields)
    stored.event_id = fields["event_id"]
    return stored


def _finish(event: WebhookEvent, status: InboxStatus, detail: str, now: datetime) -> InboxResult:
    """Record how a delivery ended, commit, and give the answer."""
    if status is InboxStatus.REJECTED:
        log.warning("webhook from %s refused: %s", event.provider, detail)
    event.status = status
    event.detail = detail[:2000]
    event.processed_at = now
    _store(event)
    db.session.commit()
    return InboxResult(status, detail)


#: Built once: every delivery runs it.
_INSERT_EVENT = _EVENTS.insert()
_EVENT_COLUMNS = [c.key for c in _EVENTS.columns if c.key != "id"]


def _store(event: WebhookEvent) -> None:
    """Write the delivery with how it ended, in the caller's transaction: a new one (the
    usual case; nothing reads it again in this request) in one prebuilt INSERT, without
    the session's flush; one stored before (a replay, or a delivery committed before its
    provider was asked) through the session."""
    if inspect(event).transient:
        row = {key: getattr(event, key) for key in _EVENT_COLUMNS}
        db.session.connection().execute(_INSERT_EVENT, row)
    else:
        db.session.add(event)
