"""Outgoing webhooks: a community's endpoints, and the worker that delivers its events to
them (``flask worker``, or the web process's thread in the demo), signed by the Standard
Webhooks scheme.

Delivery has the outbox's shape (:mod:`core.outbox`): due deliveries are claimed in a
batch — marked sending, with a lease — and committed before any request goes out; each
outcome is written as soon as it is known. A worker killed mid-delivery leaves the lease
to run out and the delivery is sent again, with the same ``webhook-id`` (the event's id),
so receivers drop what they had already. A 2xx answer delivers; anything else (another
status, a redirect — never followed —, a timeout, a refused connection) is retried on
Standard Webhooks' schedule (:data:`RETRY_SCHEDULE`) for three days, then the delivery is
given up, and an endpoint whose every attempt failed for three days is disabled (audited,
the owners told by message). Every attempt is kept with its answer for the admin page;
an event can be sent again by hand (:func:`replay_event`).

Endpoints at private, loopback or link-local addresses are refused — when created and at
every send, after the name is resolved — unless ``WEBHOOKS_ALLOW_PRIVATE_URLS`` is set,
which only the demo and the tests may do.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa
from flask import current_app
from flask_babel import LazyString
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from standardwebhooks.webhooks import Webhook

from core import audit
from core.auth import StaffUser, staff_who_can
from core.clock import utcnow
from core.db import db
from core.events import (
    EVENT_TYPES,
    DeliveryStatus,
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from core.outbox import MessageKind, enqueue, written_in

log = logging.getLogger(__name__)

#: The wait after each failed attempt (Standard Webhooks' recommended schedule); the last
#: step repeats until :data:`GIVE_UP_AFTER` has passed since the first attempt.
RETRY_SCHEDULE = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
)
GIVE_UP_AFTER = timedelta(days=3)
#: How long a claimed delivery may take before another worker sends it again.
LEASE = timedelta(minutes=2)
#: Seconds to connect, and to wait for the answer.
TIMEOUT = (3, 10)
#: Answers are kept up to this many characters.
ANSWER_LIMIT = 1024
BATCH = 50
#: Requests one worker has in flight at once.
SENDERS = 8


class UnsafeURL(ValueError):
    """The endpoint's address may not be called; the message (a lazy string) says why, in
    the reader's language."""


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def private_urls_allowed() -> bool:
    return bool(current_app.config.get("WEBHOOKS_ALLOW_PRIVATE_URLS"))


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UnsafeURL` unless ``url`` is http(s) to a public address (or any
    address, with ``allow_private``: :func:`private_urls_allowed`). Resolves the name."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL(_l("The address must start with https://"))
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (socket.gaierror, UnicodeError) as error:
        # The resolver's own words ("[Errno -2] Name or service not known") are English.
        raise UnsafeURL(
            _l("%(host)s cannot be found: check the address", host=parts.hostname)
        ) from error
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise UnsafeURL(_l("Private and local addresses are refused"))


def create_endpoint(
    community_id: int, url: str, event_types: list[str], *, actor: str, now: datetime
) -> WebhookEndpoint:
    """An admin adds an endpoint; its secret is on the returned row, to be shown once.
    Raises :class:`UnsafeURL` or ValueError (an unknown event type)."""
    unknown = set(event_types) - EVENT_TYPES.keys()
    if unknown or not event_types:
        raise ValueError(_("Unknown event types: %(types)s", types=", ".join(sorted(unknown))))
    check_url(url, allow_private=private_urls_allowed())
    endpoint = WebhookEndpoint(
        community_id=community_id,
        url=url,
        secret=new_secret(),
        event_types=sorted(event_types),
        enabled=True,
        created_at=now,
    )
    db.session.add(endpoint)
    audit.record(
        "webhook_endpoint.created",
        endpoint,
        actor=actor,
        data={"url": url, "event_types": endpoint.event_types},
        now=now,
    )
    return endpoint


def roll_secret(endpoint: WebhookEndpoint, *, actor: str, now: datetime) -> str:
    """Give the endpoint a new secret (the old one stops signing at once); returns it."""
    endpoint.secret = new_secret()
    audit.record("webhook_endpoint.secret_rolled", endpoint, actor=actor, now=now)
    return endpoint.secret


def set_enabled(endpoint: WebhookEndpoint, enabled: bool, *, actor: str, now: datetime) -> None:
    """Turn an endpoint off, or on again with its failures forgotten: its deliveries that
    were waiting go out again."""
    endpoint.enabled = enabled
    endpoint.disabled_at = None if enabled else now
    endpoint.failing_since = None
    audit.record(
        f"webhook_endpoint.{'enabled' if enabled else 'disabled'}", endpoint, actor=actor, now=now
    )


def replay_event(event: Event, *, actor: str, now: datetime) -> int:
    """Send ``event`` again to each endpoint it was delivered or due to, with a fresh
    three days of retries and the same ``webhook-id``. Returns how many deliveries."""
    count = db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.event_id == event.id)
        .values(status=DeliveryStatus.PENDING, attempts=0, next_at=now)
    ).rowcount
    audit.record("event.replayed", event, actor=actor, data={"deliveries": count}, now=now)
    return count


def retry_delay(attempts: int) -> timedelta | None:
    """The wait before the next attempt after ``attempts`` failed ones, or None once the
    attempts have gone on for :data:`GIVE_UP_AFTER` (by the schedule's waits between them)."""
    waits = [RETRY_SCHEDULE[min(n, len(RETRY_SCHEDULE)) - 1] for n in range(1, attempts + 1)]
    if sum(waits[:-1], timedelta()) >= GIVE_UP_AFTER:
        return None
    return waits[-1]


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What sending needs, copied out of the rows so no transaction stays open meanwhile."""

    id: int
    attempts: int
    endpoint_id: int
    url: str
    secret: str
    event_public_id: str
    body: str
    #: Its endpoint was failing when it was claimed: a success clears that.
    endpoint_failing: bool


def _claim(now: datetime, size: int) -> list[_Envelope]:
    """Claim up to ``size`` due deliveries to enabled endpoints for one try each, committed
    before any is sent."""
    table = WebhookDelivery.__table__
    due = (
        sa.select(table.c.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == table.c.endpoint_id)
        .where(
            table.c.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            table.c.next_at <= now,
            WebhookEndpoint.enabled,
        )
        .order_by(table.c.next_at, table.c.id)
        .limit(size)
        .with_for_update(of=table, skip_locked=True)
    )
    claimed = db.session.execute(
        table.update()
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(status=DeliveryStatus.SENDING, attempts=table.c.attempts + 1, next_at=now + LEASE)
        .returning(table.c.id, table.c.attempts, table.c.event_id, table.c.endpoint_id)
    ).all()
    if not claimed:
        db.session.commit()
        return []
    events = {
        event.id: event
        for event in db.session.scalars(
            sa.select(Event).where(Event.id.in_({row.event_id for row in claimed}))
        )
    }
    endpoints = {
        endpoint.id: endpoint
        for endpoint in db.session.scalars(
            sa.select(WebhookEndpoint).where(
                WebhookEndpoint.id.in_({row.endpoint_id for row in claimed})
            )
        )
    }
    envelopes = [
        _Envelope(
            id=row.id,
            attempts=row.attempts,
            endpoint_id=row.endpoint_id,
            url=endpoints[row.endpoint_id].url,
            secret=endpoints[row.endpoint_id].secret,
            event_public_id=events[row.event_id].public_id,
            body=json.dumps(events[row.event_id].payload(), ensure_ascii=False),
            endpoint_failing=endpoints[row.endpoint_id].failing_since is not None,
        )
        for row in claimed
    ]
    db.session.commit()
    return sorted(envelopes, key=lambda e: e.id)


def signed_headers(secret: str, webhook_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for ``body``, signed now (the receiver checks that
    the timestamp is recent, so it is the sending time, not the worker's ``now``)."""
    moment = utcnow()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, moment, body),
        "content-type": "application/json",
        "user-agent": "Qunmen-Webhooks/1",
    }


def _send(
    session: requests.Session, envelope: _Envelope, *, allow_private: bool
) -> tuple[int | None, str | LazyString]:
    """Post one delivery; returns the answer's status (None when there was none) and its
    body or the error, cut to :data:`ANSWER_LIMIT` (our own refusal of the address: a
    lazy string, for the caller to translate)."""
    try:
        check_url(envelope.url, allow_private=allow_private)
        headers = signed_headers(envelope.secret, envelope.event_public_id, envelope.body)
        with session.post(
            envelope.url,
            data=envelope.body.encode(),
            headers=headers,
            timeout=TIMEOUT,
            allow_redirects=False,
            stream=True,
        ) as answer:
            text = answer.raw.read(ANSWER_LIMIT, decode_content=True).decode(errors="replace")
            return answer.status_code, text[:ANSWER_LIMIT]
    except UnsafeURL as refused:
        return None, refused.args[0]  # translated by the caller: this thread has no app
    except (requests.RequestException, OSError) as error:
        return None, (str(error) or type(error).__name__)[:ANSWER_LIMIT]


def _record(
    envelope: _Envelope, status: int | None, answer: str, *, elapsed_ms: int, now: datetime
) -> None:
    """Write down one attempt and what it means for the delivery and its endpoint. Not
    committed: the worker commits the outcomes known at the same moment together."""
    db.session.add(
        WebhookAttempt(
            delivery_id=envelope.id,
            created_at=now,
            status=status,
            answer=answer,
            duration_ms=elapsed_ms,
        )
    )
    endpoint_table = WebhookEndpoint.__table__
    if status is not None and 200 <= status < 300:
        values = {"status": DeliveryStatus.DELIVERED, "delivered_at": now}
        if envelope.endpoint_failing:
            db.session.execute(
                endpoint_table.update()
                .where(endpoint_table.c.id == envelope.endpoint_id)
                .values(failing_since=None)
            )
    else:
        delay = retry_delay(envelope.attempts)
        if delay is None:
            values = {"status": DeliveryStatus.FAILED}
        else:
            values = {"status": DeliveryStatus.PENDING, "next_at": now + delay}
        _note_failure(envelope.endpoint_id, now=now)
    db.session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == envelope.id)
        .values(last_status=status, last_answer=answer, **values)
    )


def _note_failure(endpoint_id: int, *, now: datetime) -> None:
    """An attempt to the endpoint failed: disable it when every attempt has failed for
    :data:`GIVE_UP_AFTER`, and tell the owners."""
    endpoint = db.session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        return
    if not endpoint.enabled or now - endpoint.failing_since < GIVE_UP_AFTER:
        return
    endpoint.enabled, endpoint.disabled_at = False, now
    audit.record(
        "webhook_endpoint.disabled",
        endpoint,
        actor="system",
        data={"failing_since": endpoint.failing_since.isoformat()},
        now=now,
    )
    _tell_owners(endpoint, now=now)


def _tell_owners(endpoint: WebhookEndpoint, *, now: datetime) -> None:
    """One message to each of the community's owners (and the install's), in the
    language of their account (else zh_CN)."""
    who = staff_who_can("staff.manage", endpoint.community_id).subquery()
    owners = db.session.execute(
        sa.select(StaffUser.email, StaffUser.locale).where(StaffUser.id.in_(sa.select(who.c.id)))
    ).all()
    for email, locale in owners:
        with written_in(locale):
            subject = _("A webhook endpoint was disabled")
            body = _(
                "Every delivery to %(url)s failed for three days; it is disabled.",
                url=endpoint.url,
            )
        enqueue(MessageKind.NOTICE, [["email", email]], subject, body, now=now)


def drain_webhooks(*, now: datetime | None = None, limit: int = 500) -> int:
    """Deliver the due events, up to ``limit``: claim a batch, commit, then send its
    deliveries :data:`SENDERS` at a time (a slow endpoint does not hold up the others) and
    record each outcome as soon as it is known (those known at the same moment in one
    commit), so a worker killed mid-batch sends again only those it was sending. Called
    by the worker. Returns how many were tried."""
    tried = 0
    sessions: list[requests.Session] = []
    local = threading.local()
    allow_private = private_urls_allowed()  # read here: the senders have no app context

    def send(envelope: _Envelope) -> tuple[_Envelope, int | None, str | LazyString, int]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            sessions.append(local.session)
        started = time.perf_counter()
        status, answer = _send(local.session, envelope, allow_private=allow_private)
        return envelope, status, answer, int((time.perf_counter() - started) * 1000)

    try:
        with ThreadPoolExecutor(SENDERS, thread_name_prefix="webhooks") as pool:
            while tried < limit:
                batch = _claim(now or utcnow(), min(BATCH, limit - tried))
                if not batch:
                    break
                tried += len(batch)
                sending = {pool.submit(send, envelope) for envelope in batch}
                while sending:
                    # The outcomes known by now, committed together.
                    done, sending = wait(sending, return_when=FIRST_COMPLETED)
                    for future in done:
                        envelope, status, answer, elapsed = future.result()
                        answer = str(answer)[:ANSWER_LIMIT]  # a refusal: in our language
                        if status is None or status >= 300:
                            log.warning(
                                "webhook delivery %s failed: %s %s",
                                envelope.id,
                                status,
                                answer[:200],
                            )
                        _record(envelope, status, answer, elapsed_ms=elapsed, now=now or utcnow())
                    db.session.commit()
    finally:
        for session in sessions:
            session.close()
    return tried
