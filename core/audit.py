"""The audit log: one append-only entry for every state change an admin, a member, a
prospect or a webhook makes. Written in the same transaction as the change it describes:
the transaction's entries are held until it commits and inserted then, together (a
webhook's five entries cost one statement, not five); a rollback drops them with the
changes they describe.

The log is read by people: each package registers what its actions and the rows they touch
are called (:func:`register_labels`), what the details its entries record are called and
how their codes read (:func:`register_details`), and how its actors are named
(:func:`register_actor_names`), as it registers its checks with :mod:`core.checks`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import has_request_context, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.clock import local_time, utcnow
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


#: Built once: every transaction that changes anything runs it. With RETURNING, SQLAlchemy
#: sends a transaction's entries as one multi-row INSERT (its "insertmanyvalues"), where
#: psycopg would send one INSERT per entry in a pipeline.
_INSERT_ENTRIES = AuditEntry.__table__.insert().returning(AuditEntry.__table__.c.id)
#: Where a session holds the entries of its transaction until it commits.
_PENDING = "audit_entries"
#: The key under which an entry about a row not inserted yet holds the row itself: its id
#: (and its community) are read once the commit's flush has inserted it.
_TARGET = "target"
#: Set in a session's info while :func:`ids_at_commit` is in force.
_IDS_AT_COMMIT = "audit_ids_at_commit"


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
    It is filed under ``community_id``, by default the target's community. A target not
    inserted yet is flushed to learn its id, except inside :func:`ids_at_commit`."""
    later = target.id is None and db.session.info.get(_IDS_AT_COMMIT, False)
    if target.id is None and not later:
        db.session.flush()
    if community_id is None and not later:
        community_id = community_id_of(target)
    entry = _entry(action, target.__tablename__, target.id, actor, data, now, community_id)
    if later:
        entry[_TARGET] = target
    db.session.info.setdefault(_PENDING, []).append(entry)


def record_row(
    action: str,
    table: str,
    row_id: int,
    *,
    actor: str,
    community_id: int | None,
    data: dict[str, Any] | None = None,
    now: datetime,
) -> None:
    """:func:`record` for a row written by a Core statement, ``row_id`` of ``table``: there
    is no object to read the id and the community from, so the caller gives them. Written
    when the session commits, with the other entries."""
    entry = _entry(action, table, row_id, actor, data, now, community_id)
    db.session.info.setdefault(_PENDING, []).append(entry)


def _entry(
    action: str,
    table: str,
    row_id: int | None,
    actor: str,
    data: dict[str, Any] | None,
    now: datetime | None,
    community_id: int | None,
) -> dict[str, Any]:
    return {
        "created_at": now or utcnow(),
        "actor": actor,
        "action": action,
        "target_type": table,
        "target_id": row_id,
        "data": data or {},
        "community_id": community_id,
        "ip": request.remote_addr if has_request_context() else None,
    }


@contextmanager
def ids_at_commit() -> Iterator[None]:
    """Within this block an entry about a row not inserted yet does not flush to learn the
    row's id: it is read when the commit's flush has inserted the row. For the money path,
    where a webhook's flushes cost more than everything else it does; code inside must not
    count on an entry having flushed (a row's id, its column defaults)."""
    info = db.session.info
    outer = info.get(_IDS_AT_COMMIT, False)
    info[_IDS_AT_COMMIT] = True
    try:
        yield
    finally:
        info[_IDS_AT_COMMIT] = outer


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
    """Insert the transaction's entries in one statement, after a flush has given every
    row they name its id."""
    entries = session.info.pop(_PENDING, None)
    if not entries:
        return
    if any(_TARGET in entry for entry in entries):
        session.flush()
        for entry in entries:
            if (target := entry.pop(_TARGET, None)) is not None:
                entry["target_id"] = target.id
                if entry["community_id"] is None:
                    entry["community_id"] = community_id_of(target)
    session.connection().execute(_INSERT_ENTRIES, entries)


@event.listens_for(Session, "after_soft_rollback")
def _drop_entries(session: Session, _transaction) -> None:
    session.info.pop(_PENDING, None)


def apply_changes(target: db.Model, values: dict[str, Any]) -> dict[str, str | bool | None]:
    """Set ``values`` on ``target`` (an edit form's fields); returns those that changed, for
    the audit entry's data (see :func:`_as_detail`)."""
    changed = {}
    for name, value in values.items():
        if getattr(target, name) != value:
            changed[name] = _as_detail(value)
            setattr(target, name, value)
    return changed


def _as_detail(value: Any) -> str | bool | None:
    """An edited field's new value as an entry keeps it: flags and nothing as themselves,
    rows by their ids, anything else as text."""
    if value is None or isinstance(value, bool):
        return value
    return str([v.id for v in value] if isinstance(value, list) else value)


#: What each action is called on the audit log (lazy strings), by action.
_ACTION_LABELS: dict[str, object] = {}
#: What the rows actions touch are called, by table name.
_TARGET_LABELS: dict[str, object] = {}
#: What the keys of entries' details are called, by key.
_DETAIL_LABELS: dict[str, object] = {}
#: How to read the values of the keys whose values are codes, by key: each package's way,
#: tried in turn (``kind`` is a tier's kind, a flag's, a perk's …).
_VALUE_READERS: dict[str, list[Callable[[str], str | None]]] = {}
#: For each kind of actor (``staff`` in ``staff:1``), how to name those of a page at once:
#: given their ids, a name for each id it knows.
_ACTOR_NAMERS: dict[str, Callable[[list[str]], Mapping[str, str]]] = {}
#: Actors named by what they are, not by a row.
_PLAIN_ACTORS = {
    "system": _l("System"),
    "system:auto-approve": _l("System (automatic approval)"),
    "cli": _l("Command line"),
    "prospect": _l("A prospect"),
    "telegram": _l("Telegram"),
}


def register_labels(
    actions: Mapping[str, object], targets: Mapping[str, object] | None = None
) -> None:
    """Called once at import by a package, for the actions it records and the tables it
    owns: each with its label (a lazy string), shown on the audit log."""
    _ACTION_LABELS.update(actions)
    _TARGET_LABELS.update(targets or {})


def register_details(
    labels: Mapping[str, object], values: Mapping[str, Callable[[str], str | None]] | None = None
) -> None:
    """Called once at import by a package, for the details its entries record: the label of
    each key (a lazy string), and for the keys whose values are codes, how to read one
    (None for a code it does not know: the next package's reader is tried, and a code no
    reader knows is shown as it is). A key named before keeps its label: core names first
    the keys every package's entries share (``name``, ``kind``, ``active`` …), which an
    edit form's field labels would name for one form only."""
    for key, label in labels.items():
        _DETAIL_LABELS.setdefault(key, label)
    for key, reader in (values or {}).items():
        _VALUE_READERS.setdefault(key, []).append(reader)


def register_actor_names(kind: str, namer: Callable[[list[str]], Mapping[str, str]]) -> None:
    """Called once at import by the package whose people act as ``kind:<id>``; ``namer``
    is given the ids of one page's entries and answers with a name for each."""
    _ACTOR_NAMERS[kind] = namer


def registered_actions() -> list[tuple[str, str]]:
    """Every registered action with its label, in the order of the labels (for a filter)."""
    return sorted(((action, str(label)) for action, label in _ACTION_LABELS.items()), key=_second)


def registered_targets() -> list[tuple[str, str]]:
    return sorted(((table, str(label)) for table, label in _TARGET_LABELS.items()), key=_second)


def _second(pair: tuple[str, str]) -> str:
    return pair[1]


def action_label(action: str) -> str:
    """What ``action`` is called in the reader's language; an action nobody registered
    (a test checks there is none) shows as it is."""
    label = _ACTION_LABELS.get(action)
    return str(label) if label is not None else action


def target_label(target_type: str) -> str:
    label = _TARGET_LABELS.get(target_type)
    return str(label) if label is not None else target_type


def actor_names(actors: Iterable[str]) -> dict[str, str]:
    """A name for each of ``actors`` (as entries store them): the staff member's name,
    "member 0042", "Stripe", "System". Asks each kind's namer once for all its ids."""
    names = {}
    ids: dict[str, set[str]] = {}
    for actor in actors:
        if actor in _PLAIN_ACTORS:
            names[actor] = str(_PLAIN_ACTORS[actor])
        else:
            kind, _sep, actor_id = actor.partition(":")
            ids.setdefault(kind, set()).add(actor_id)
    for kind, kind_ids in ids.items():
        namer = _ACTOR_NAMERS.get(kind)
        found = namer(sorted(kind_ids)) if namer is not None else {}
        for actor_id in kind_ids:
            actor = f"{kind}:{actor_id}"
            names[actor] = found.get(actor_id) or _("Unknown (%(actor)s)", actor=actor)
    return names


def detail_label(key: str) -> str:
    """What the detail ``key`` is called in the reader's language; a key nobody registered
    (the tests refuse to record one) shows as it is, its underscores as spaces."""
    label = _DETAIL_LABELS.get(key)
    return str(label) if label is not None else key.replace("_", " ")


#: A moment as entries keep it (``datetime.isoformat()`` of an aware time).
_MOMENT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d:\d\d")


def detail_lines(data: Mapping[str, Any], zone: str) -> list[tuple[str, str]]:
    """An entry's details as (label, value) lines a person can read, in their language:
    the keys' labels, codes read by their key's reader, yes or no for a flag, moments in
    ``zone`` (the page's), text with its own characters (never ``\\uXXXX`` escapes),
    lists joined with commas."""

    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ", ".join(text(item) for item in value)
        if isinstance(value, dict):
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        # Also as text: edits recorded them so before flags were kept as flags.
        if value is None or value == "None":
            return "—"
        if value is True or value == "True":
            return _("Yes")
        if value is False or value == "False":
            return _("No")
        if isinstance(value, str) and _MOMENT.fullmatch(value):
            return local_time(datetime.fromisoformat(value), zone)
        return str(value)

    def read(key: str, value: Any) -> str:
        if isinstance(value, str):
            for reader in _VALUE_READERS.get(key, ()):
                if (said := reader(value)) is not None:
                    return said
        return text(value)

    return [(detail_label(key), read(key, value)) for key, value in data.items()]
