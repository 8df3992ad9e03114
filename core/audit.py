"""The audit log: one append-only entry for every state change an admin, a member, a
prospect or a webhook makes. Written in the same transaction as the change it describes:
the transaction's entries are held until it commits and inserted then, together (a
webhook's five entries cost one statement, not five); a rollback drops them with the
changes they describe."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import has_request_context, request
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.clock import utcnow
from core.db import UTCDateTime, db


class AuditEntry(db.Model):
    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: Who did it: ``staff:<id>``, ``member:<id>``, ``prospect``, ``webhook:<provider>``,
    #: ``cli`` or ``system``.
    actor: Mapped[str] = mapped_column(sa.String(64))
    #: What happened, ``<noun>.<verb>``: ``order.created``, ``payment.confirmed`` …
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    #: The row it happened to: table name and primary key.
    target_type: Mapped[str] = mapped_column(sa.String(64))
    target_id: Mapped[int | None]
    #: Details worth keeping; never secrets.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    #: The community the change happened in (None for the install's own things): the
    #: log shows staff only their communities' entries.
    community_id: Mapped[int | None] = mapped_column(index=True)
    #: The client address of the request that made the change (none for CLI and workers).
    ip: Mapped[str | None] = mapped_column(sa.String(45))

    __table_args__ = (sa.Index(None, "target_type", "target_id"),)


#: Where a session holds the entries of its transaction until it commits.
_PENDING = "audit_entries"


def record(
    action: str,
    target: db.Model,
    *,
    actor: str,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
    community_id: int | None = None,
) -> None:
    """Append an audit entry for ``action`` on ``target``, written when the session commits.
    It is filed under ``community_id``, by default the target's community."""
    if target.id is None:
        db.session.flush()
    if community_id is None:
        community_id = community_id_of(target)
    db.session.info.setdefault(_PENDING, []).append(
        {
            "created_at": now or utcnow(),
            "actor": actor,
            "action": action,
            "target_type": target.__tablename__,
            "target_id": target.id,
            "data": data or {},
            "community_id": community_id,
            "ip": request.remote_addr if has_request_context() else None,
        }
    )


#: The relationships by which an object leads to its community, tried in this order (a
#: payment through its order, a removal task through its group …).
_TOWARDS_COMMUNITY = ("community", "order", "member", "group", "invitation", "event", "payment")


def community_id_of(obj) -> int | None:
    """The id of the community ``obj`` belongs to (a community is its own), or None for
    things of the install as a whole (a staff account, a provider notification matched to
    no payment, a message to no member)."""
    if obj.__tablename__ == "communities":
        return obj.id
    if (community_id := getattr(obj, "community_id", None)) is not None:
        return community_id
    for name in _TOWARDS_COMMUNITY:
        if (related := getattr(obj, name, None)) is not None:
            return community_id_of(related)
    return None


@event.listens_for(Session, "before_commit")
def _write_entries(session: Session) -> None:
    entries = session.info.pop(_PENDING, None)
    if entries:
        session.connection().execute(AuditEntry.__table__.insert(), entries)


@event.listens_for(Session, "after_soft_rollback")
def _drop_entries(session: Session, _transaction) -> None:
    session.info.pop(_PENDING, None)


def apply_changes(target: db.Model, values: dict[str, Any]) -> dict[str, str]:
    """Set ``values`` on ``target`` (an edit form's fields); returns those that changed, as
    text for the audit entry's data (lists of rows by their ids)."""
    changed = {}
    for name, value in values.items():
        if getattr(target, name) != value:
            changed[name] = str([v.id for v in value] if isinstance(value, list) else value)
            setattr(target, name, value)
    return changed
