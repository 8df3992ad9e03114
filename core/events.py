"""Events: what happened in a community, for the API's event feed and the outgoing webhooks.

Every layer writes them (payments: ``payment.confirmed`` …, membership: ``member.admitted``
…, perks: ``perk.redeemed``) with :func:`record_event`, in the transaction of the change it
describes: a rollback drops the event with the change, and a committed change always has
its event. The event's data is plain JSON of ids and public ids — never secrets, never a
contact — so what an endpoint receives is no more than a ``members:read`` token could read.

Events are held by the session and written when it commits, in one statement (as the audit
log's entries are: a payment webhook writes two events and must stay cheap). Fan-out
happens then too: one :class:`WebhookDelivery` row per enabled endpoint of the community
that subscribes to the event's type. The worker then only claims
due deliveries (no second pass over events), and an endpoint gets the events that happened
while it was subscribed — not those from before it existed, nor those of a type it added
later. Sending lives in :mod:`core.webhooks_out`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from core.db import UTCDateTime, db, enum_column
from core.security import new_token

#: The event types, and what each says (for the admin page and the API's document).
EVENT_TYPES = {
    "member.admitted": _l("A member was admitted"),
    "membership.renewed": _l("A membership was renewed"),
    "membership.renewal_taken_back": _l("A renewal's days were taken back (its money went back)"),
    "membership.ended": _l("A membership ended or was suspended"),
    "invitation.joined": _l("An invitation was used to join"),
    "payment.confirmed": _l("A payment was confirmed"),
    "payment.refunded": _l("A refund went through"),
    "dispute.opened": _l("A chargeback was opened"),
    "dispute.closed": _l("A chargeback was won or lost"),
    "perk.redeemed": _l("A perk was redeemed"),
    "application.submitted": _l("An application was submitted"),
}


class Event(db.Model):
    """Something that happened in a community, kept for the feed and for replays."""

    __tablename__ = "events"

    #: Also the feed's cursor: events are read in id order.
    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``evt_…``: the id receivers see (``webhook-id`` is ``msg_`` + this).
    public_id: Mapped[str] = mapped_column(sa.String(40), unique=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"))
    #: A key of :data:`EVENT_TYPES`.
    type: Mapped[str] = mapped_column(sa.String(40))
    #: Ids and public ids of what it is about; never secrets or contacts.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index(None, "community_id", "id"),)

    def payload(self) -> dict[str, Any]:
        """What the feed shows and an endpoint receives."""
        return {
            "id": self.public_id,
            "type": self.type,
            "created_at": self.created_at.isoformat(),
            "data": self.data,
        }


class WebhookEndpoint(db.Model):
    """A community's receiver of events."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    url: Mapped[str] = mapped_column(sa.String(500))
    #: ``whsec_`` + base64: the Standard Webhooks signing secret. The receiver needs it in
    #: clear, so it is kept in clear; it is shown on creation and when rolled.
    secret: Mapped[str] = mapped_column(sa.String(80))
    #: The keys of :data:`EVENT_TYPES` it subscribes to.
    event_types: Mapped[list[str]] = mapped_column(sa.JSON)
    enabled: Mapped[bool] = mapped_column(default=True)
    #: Since when every attempt failed; none once one succeeds.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  #: claimed; sent again if its lease runs out first
    DELIVERED = "delivered"
    FAILED = "failed"  #: given up after three days; can be replayed


class WebhookDelivery(db.Model):
    """One event to one endpoint, sent until it is answered with a 2xx."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("events.id"), index=True)
    endpoint_id: Mapped[int] = mapped_column(sa.ForeignKey("webhook_endpoints.id"), index=True)
    status: Mapped[DeliveryStatus] = mapped_column(enum_column(DeliveryStatus))
    attempts: Mapped[int] = mapped_column(default=0)
    #: When it is next due: its first try, a retry after backoff, or a lease's end.
    next_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The HTTP status of the last answer (none when there was no answer).
    last_status: Mapped[int | None]
    #: The last answer's body or the error, cut to 1 KB.
    last_answer: Mapped[str | None] = mapped_column(sa.String(1024))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    event: Mapped[Event] = relationship()
    endpoint: Mapped[WebhookEndpoint] = relationship()

    __table_args__ = (sa.Index(None, "status", "next_at"),)


class WebhookAttempt(db.Model):
    """One try of a delivery and its answer, for the admin page."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(sa.ForeignKey("webhook_deliveries.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[int | None]
    answer: Mapped[str | None] = mapped_column(sa.String(1024))
    #: Milliseconds until the answer (or the error).
    duration_ms: Mapped[int]


#: Where a session holds the events of its transaction until it commits.
_PENDING = "events"


def record_event(community_id: int, type: str, data: dict[str, Any], *, now: datetime) -> None:
    """Add an event of ``type`` to the caller's transaction. Called next to the audit entry
    of the change; written when the session commits, with a delivery for each endpoint
    that subscribes to it (like the audit log's entries, the transaction's events cost
    one statement in all, three with subscribers)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    db.session.info.setdefault(_PENDING, []).append(
        {
            "public_id": f"evt_{new_token(16)}",
            "community_id": community_id,
            "type": type,
            "data": data,
            "created_at": now,
        }
    )


#: Built once: every transaction that records an event runs them.
_SUBSCRIBERS = sa.select(
    WebhookEndpoint.id, WebhookEndpoint.community_id, WebhookEndpoint.event_types
).where(
    WebhookEndpoint.community_id.in_(sa.bindparam("communities", expanding=True)),
    WebhookEndpoint.enabled,
)
_EVENTS = Event.__table__
#: The events inserted, each answering whether its community has an enabled endpoint:
#: most have none, and then the INSERT is the only statement. The answer is read in the
#: transaction, like a SELECT of the endpoints: an endpoint added by any process or
#: instance is seen by the next event. Written as SQL text because SQLAlchemy renders a
#: subquery of RETURNING unqualified on SQLite (``community_id = community_id``); the
#: same text runs on PostgreSQL.
_INSERT_EVENTS_SEEING_SUBSCRIBERS = _EVENTS.insert().returning(
    _EVENTS.c.id,
    _EVENTS.c.public_id,
    sa.literal_column(
        "EXISTS (SELECT 1 FROM webhook_endpoints AS subscriber"
        " WHERE subscriber.community_id = events.community_id AND subscriber.enabled)",
        sa.Boolean,
    ),
)
_INSERT_DELIVERIES = WebhookDelivery.__table__.insert()


@sa.event.listens_for(Session, "before_commit")
def _write_events(session: Session) -> None:
    events = session.info.pop(_PENDING, None)
    if not events:
        return
    connection = session.connection()
    inserted = connection.execute(_INSERT_EVENTS_SEEING_SUBSCRIBERS, events).all()
    if not any(subscribed for _id, _public_id, subscribed in inserted):
        return
    ids = {public_id: event_id for event_id, public_id, _subscribed in inserted}
    communities = list({event["community_id"] for event in events})
    endpoints = connection.execute(_SUBSCRIBERS, {"communities": communities}).all()
    deliveries = [
        {
            "event_id": ids[event["public_id"]],
            "endpoint_id": endpoint.id,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_at": event["created_at"],
        }
        for event in events
        for endpoint in endpoints
        if endpoint.community_id == event["community_id"] and event["type"] in endpoint.event_types
    ]
    if deliveries:
        connection.execute(_INSERT_DELIVERIES, deliveries)


@sa.event.listens_for(Session, "after_soft_rollback")
def _drop_events(session: Session, _transaction) -> None:
    session.info.pop(_PENDING, None)
