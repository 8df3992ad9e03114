"""A community's figures by day of its calendar, kept as the writes happen: net revenue
per currency, members who joined and memberships that ended, the join funnel's
applications, orders and paid orders, and the change in paying members. The dashboard
reads these rows (a few hundred at most) instead of aggregating every ledger entry and
membership of the period.

The session hooks here keep them in the transaction of the writes they count: each flush
tallies what it wrote (new :class:`~payments.models.LedgerEntry` rows, new memberships of
paid tiers, applications, orders becoming paid, memberships changing status, new
``membership.ended`` events) and the commit adds the tallies with one UPSERT per row
(``x = x + excluded.x``), by statements built once. Rows are written at the very end of
the transaction, and on PostgreSQL each transaction adds to one of :data:`SLOTS` rows of
the day chosen at random, so parallel payments of one community do not queue on one row
for their commits. A rollback drops the tallies with the writes.

Writes the hooks cannot see (bulk inserts that skip the ORM, a migration) are followed by
:func:`rebuild`, which recomputes a community's rows from the source rows; so is a change
of the community's time zone (its days move) or of a tier's kind (whether it counts as
paid), which the hook notices itself. ``flask check`` compares the rows with the same
recomputation (:func:`recomputed`).
"""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Engine, event
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

from core.clock import utcnow
from core.db import UTCDateTime, db, insert_for
from core.events import _PENDING as _PENDING_EVENTS
from core.events import Event
from membership.models import (
    CURRENT_MEMBERSHIP_STATUSES,
    Application,
    Community,
    Member,
    Membership,
    MembershipStatus,
    Tier,
    TierKind,
)
from payments.models import LedgerEntry, Order

#: Rows per community, day and currency on PostgreSQL: a transaction adds to one of them,
#: chosen at random; readers sum them. SQLite has one writer at a time and uses one.
SLOTS = 8
#: The figures of a row, in the order the tallies keep them.
FIELDS = ("revenue", "joined", "ended", "applications", "orders", "paid", "paying")
#: The currency of the row that holds the counts (revenue rows name theirs).
COUNTS = ""

_TALLY = "daily_figures"


class DailyFigures(db.Model):
    """One community's figures on one day of its calendar: the revenue of one currency, or
    (``currency`` :data:`COUNTS`) the counts; one of :data:`SLOTS` such rows."""

    __tablename__ = "daily_figures"

    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), primary_key=True)
    #: A day of the community's calendar (its time zone).
    day: Mapped[date] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    slot: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    #: Net ledger movements (payments less refunds and chargebacks), minor units.
    revenue: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    #: Memberships of paid tiers that started.
    joined: Mapped[int] = mapped_column(default=0, server_default="0")
    #: ``membership.ended`` events, suspensions (disputes) aside.
    ended: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Applications made; of those made this day, the ones with an order and the ones whose
    #: order was paid (whenever it was paid: a funnel of the day's applicants).
    applications: Mapped[int] = mapped_column(default=0, server_default="0")
    orders: Mapped[int] = mapped_column(default=0, server_default="0")
    paid: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Members who came to hold a current membership of a paid tier, less those who stopped
    #: (by status; see :func:`paying_members`): their sum over all days is those paying.
    paying: Mapped[int] = mapped_column(default=0, server_default="0")


class _Tally:
    """What a transaction's flushes wrote that the figures count, until its commit."""

    def __init__(self) -> None:
        #: (community id, moment, currency) → the deltas of :data:`FIELDS`.
        self.moments: list[tuple[int, datetime, str, int, int]] = []
        #: Orders that became paid: their application's day counts one more paid.
        self.paid_orders: set[int] = set()
        #: Member id → [change in their current paid memberships, community id, moment].
        self.paying: dict[int, list] = {}
        #: Members created in this transaction (they held nothing before it).
        self.new_members: set[int] = set()
        #: Communities whose days or paid tiers changed: recomputed at the commit.
        self.rebuild: set[int] = set()

    def add(self, community_id: int, moment: datetime, field: str, by: int = 1, currency=COUNTS):
        self.moments.append((community_id, moment, currency, FIELDS.index(field), by))


def _tally(session: Session) -> _Tally:
    tally = session.info.get(_TALLY)
    if tally is None:
        tally = session.info[_TALLY] = _Tally()
    return tally


def count_paid_admission(
    session: Session,
    community_id: int,
    *,
    amount: int,
    currency: str,
    applied_at: datetime,
    now: datetime,
) -> None:
    """Called by :mod:`membership.paid_join`, which writes a paid admission with Core
    statements the flush hook never sees: tally what :func:`_count_flushed` would have
    counted for it. Its payment's ledger entry of ``amount`` (revenue, now), its order
    becoming paid (one more paid on the day of the application, made ``applied_at``), a
    membership of a paid tier starting now (joined) and held by a member created in this
    transaction, who held none before (one more paying)."""
    tally = _tally(session)
    tally.add(community_id, now, "revenue", amount, currency)
    tally.add(community_id, applied_at, "paid")
    tally.add(community_id, now, "joined")
    tally.add(community_id, now, "paying")


def count_application(session: Session, community_id: int, *, made_at: datetime) -> None:
    """Called by :mod:`membership.fresh_application`, which writes a join form's application
    and its order with Core statements the flush hook never sees: tally what
    :func:`_count_flushed` would have counted for them (one more application, and one more
    order, on the day they were made)."""
    tally = _tally(session)
    tally.add(community_id, made_at, "applications")
    tally.add(community_id, made_at, "orders")


def _loaded(session: Session, model, ids: Iterable[int], names: tuple[str, ...]) -> dict:
    """``names`` of the ``model`` rows ``ids``: from objects the session holds, else one
    SELECT for the rest."""
    found, missing = {}, []
    for id_ in ids:
        obj = session.identity_map.get(session.identity_key(model, id_))
        if obj is not None and not set(names) & sa.inspect(obj).unloaded:
            found[id_] = tuple(getattr(obj, name) for name in names)
        else:
            missing.append(id_)
    if missing:
        columns = [getattr(model, name) for name in names]
        rows = session.execute(sa.select(model.id, *columns).where(model.id.in_(missing)))
        found.update({row[0]: tuple(row[1:]) for row in rows})
    return found


def _old(obj, name: str):
    """``obj``'s ``name`` before this flush changed it (its value now when unchanged; None
    when it was set without being loaded first: the columns read so are set once, from
    None, or their change is recomputed anyway; ``Membership.status`` keeps its history)."""
    history = sa.inspect(obj).attrs[name].history
    if history.deleted:
        return history.deleted[0]
    return None if history.added else getattr(obj, name)


def _is_current(status) -> bool:
    return status in CURRENT_MEMBERSHIP_STATUSES


def _counts_as_ended(event_type: str, data: dict) -> bool:
    return (
        event_type == "membership.ended" and data.get("status") != MembershipStatus.SUSPENDED.value
    )


@event.listens_for(Session, "after_flush")
def _count_flushed(session: Session, _context) -> None:
    """Tally what this flush wrote (see the module's docstring). Objects change through the
    ORM; a flush that wrote none of them costs a pass over its objects and nothing else."""
    tally: _Tally | None = None
    memberships: list[tuple[Membership, int]] = []
    moved: list[tuple[Membership, datetime | None]] = []
    ledger: list[LedgerEntry] = []
    for obj in session.new:
        if isinstance(obj, LedgerEntry):
            ledger.append(obj)
        elif isinstance(obj, Membership):
            memberships.append((obj, 1 if _is_current(obj.status) else 0))
        elif isinstance(obj, Member):
            tally = tally or _tally(session)
            tally.new_members.add(obj.id)
        elif isinstance(obj, Application):
            tally = tally or _tally(session)
            tally.add(obj.community_id, obj.created_at, "applications")
            if obj.order_id is not None:
                tally.add(obj.community_id, obj.created_at, "orders")
        elif isinstance(obj, Order) and obj.paid_at is not None:
            tally = tally or _tally(session)
            tally.paid_orders.add(obj.id)
        elif isinstance(obj, Event) and _counts_as_ended(obj.type, obj.data):
            tally = tally or _tally(session)
            tally.add(obj.community_id, obj.created_at, "ended")
    for obj in session.dirty:
        if isinstance(obj, Membership):
            was, now = _is_current(_old(obj, "status")), _is_current(obj.status)
            if was != now:
                memberships.append((obj, now - was))
            started = _old(obj, "starts_at")
            if started != obj.starts_at:  # moved (an import's join date put right)
                moved.append((obj, started))
        elif isinstance(obj, Order):
            if obj.paid_at is not None and _old(obj, "paid_at") is None:
                tally = tally or _tally(session)
                tally.paid_orders.add(obj.id)
        elif isinstance(obj, Application):
            if obj.order_id is not None and _old(obj, "order_id") is None:
                tally = tally or _tally(session)
                tally.add(obj.community_id, obj.created_at, "orders")
        elif isinstance(obj, Community):
            if obj.time_zone != _old(obj, "time_zone"):
                tally = tally or _tally(session)
                tally.rebuild.add(obj.id)
        elif isinstance(obj, Tier) and obj.kind != _old(obj, "kind"):
            tally = tally or _tally(session)
            tally.rebuild.add(obj.community_id)
    if tally is not None and tally.paid_orders:
        _paid_applications_held(session, tally)
    if ledger:
        tally = tally or _tally(session)
        communities = _loaded(session, Order, {e.order_id for e in ledger}, ("community_id",))
        for entry in ledger:
            (community_id,) = communities[entry.order_id]
            tally.add(community_id, entry.created_at, "revenue", entry.amount, entry.currency)
    if moved:
        tally = tally or _tally(session)
        tiers = _loaded(session, Tier, {m.tier_id for m, _ in moved}, ("community_id", "kind"))
        for membership, started in moved:
            community_id, kind = tiers[membership.tier_id]
            if kind is TierKind.PAID and started is not None:
                tally.add(community_id, started, "joined", -1)
                tally.add(community_id, membership.starts_at, "joined")
    if memberships:
        tally = tally or _tally(session)
        tiers = _loaded(
            session, Tier, {m.tier_id for m, _ in memberships}, ("community_id", "kind")
        )
        for membership, change in memberships:
            community_id, kind = tiers[membership.tier_id]
            if kind is not TierKind.PAID:
                continue
            new = membership in session.new
            if new:
                tally.add(community_id, membership.starts_at, "joined")
            if change:
                moment = membership.starts_at if new else utcnow()
                held = tally.paying.setdefault(membership.member_id, [0, community_id, moment])
                held[0] += change
                held[2] = max(held[2], moment)


@event.listens_for(Session, "before_commit", insert=True)
def _count_pending(session: Session) -> None:
    """Before anything else the commit does: flush what is left (so the flush hook sees it)
    and tally the ``membership.ended`` events the transaction holds for its commit."""
    session.flush()
    events = session.info.get(_PENDING_EVENTS) or ()
    ended = [e for e in events if _counts_as_ended(e["type"], e["data"])]
    if ended:
        tally = _tally(session)
        for e in ended:
            tally.add(e["community_id"], e["created_at"], "ended")


@event.listens_for(Session, "before_commit")
def _write_tally(session: Session) -> None:
    """The commit's last writes: the tallies added to their rows (one UPSERT per row, in
    key order so two transactions never wait on each other's rows crosswise), then the
    communities to recompute. Holding the rows' locks only from here to the commit's end
    keeps parallel payments of one community from queueing behind each other."""
    tally: _Tally | None = session.info.pop(_TALLY, None)
    if tally is None:
        return
    deltas = _deltas(session, tally)
    rows = [
        {"community_id": c, "currency": cur, "moment": moment, **dict(zip(FIELDS, v, strict=True))}
        for (c, cur, moment), v in sorted(deltas.items())
        if c not in tally.rebuild and any(v)
    ]
    if rows:
        dialect = session.get_bind().dialect.name
        slot = random.randrange(SLOTS) if dialect == "postgresql" else 0  # noqa: S311
        session.connection().execute(_upsert(dialect), [row | {"slot": slot} for row in rows])
    if tally.rebuild:
        rebuild(session, sorted(tally.rebuild))


@event.listens_for(Session, "after_transaction_end")
def _drop_tally(session: Session, transaction) -> None:
    """A transaction that ended without its commit writing the tally (rolled back, or the
    session closed) leaves none behind for the next one."""
    if transaction.parent is None:
        session.info.pop(_TALLY, None)


def _deltas(session: Session, tally: _Tally) -> dict[tuple[int, str, datetime], list[int]]:
    """The tally's deltas by community, currency and moment (the UPSERT finds the moment's
    day in the community's time zone itself: no look-up of the zone here). In that order,
    a transaction's rows are locked by currency then day, as every other transaction's."""
    moments = list(tally.moments)
    if tally.paid_orders:
        moments += _paid_applications(session, tally.paid_orders)
    if tally.paying:
        moments += _paying_changes(session, tally)
    deltas: dict[tuple[int, str, datetime], list[int]] = defaultdict(lambda: [0] * len(FIELDS))
    for community_id, moment, currency, field, by in moments:
        deltas[community_id, currency, moment][field] += by
    return deltas


def _paid_applications_held(session: Session, tally: _Tally) -> None:
    """A paid count on the day of each paid order's application that the session holds
    (the admission that follows a payment has it in hand): no statement for those."""
    paid = FIELDS.index("paid")
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Application) and obj.order_id in tally.paid_orders:
            tally.moments.append((obj.community_id, obj.created_at, COUNTS, paid, 1))
            tally.paid_orders.discard(obj.order_id)


def _paid_applications(session: Session, order_ids: set[int]) -> list[tuple]:
    """A paid count on the day of each remaining paid order's application (one statement;
    orders for courses have none)."""
    rows = session.execute(
        sa.select(Application.community_id, Application.created_at).where(
            Application.order_id.in_(order_ids)
        )
    )
    paid = FIELDS.index("paid")
    return [(c, when, COUNTS, paid, 1) for c, when in rows]


def _paying_changes(session: Session, tally: _Tally) -> list[tuple]:
    """Members who started or stopped paying: those whose current paid memberships went
    from none to some, or from some to none, in this transaction. A member created in it
    held none before; the others' memberships now are read (one statement)."""
    changed = {m: held for m, held in tally.paying.items() if held[0]}
    known = [m for m in changed if m not in tally.new_members]
    now_held = dict.fromkeys(changed, 0)
    for m in changed.keys() - set(known):
        now_held[m] = changed[m][0]
    if known:
        rows = session.execute(
            sa.select(Membership.member_id, sa.func.count())
            .join(Tier, Tier.id == Membership.tier_id)
            .where(
                Membership.member_id.in_(known),
                Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES),
                Tier.kind == TierKind.PAID,
            )
            .group_by(Membership.member_id)
        )
        now_held.update(dict(rows.all()))
    paying = FIELDS.index("paying")
    changes = []
    for member_id, (change, community_id, moment) in changed.items():
        after = now_held[member_id]
        delta = (after > 0) - (after - change > 0)
        if delta:
            changes.append((community_id, moment, COUNTS, paying, delta))
    return changes


_UPSERTS: dict[str, sa.Insert] = {}


def _upsert(dialect: str) -> sa.Insert:
    """For ``dialect``, built once: ``INSERT … SELECT`` the figures onto the day of
    ``:moment`` in the community's time zone (read from its row in the same statement),
    ``ON CONFLICT DO UPDATE SET x = x + excluded.x``."""
    if dialect not in _UPSERTS:
        table = DailyFigures.__table__
        moment = sa.bindparam("moment", type_=UTCDateTime)
        if dialect == "postgresql":
            day = sa.cast(sa.func.timezone(Community.time_zone, moment), sa.Date)
        else:
            day = sa.func.figures_local_day(moment, Community.time_zone, type_=sa.Date)
        source = sa.select(
            Community.id,
            day,
            sa.bindparam("currency", type_=sa.String),
            sa.bindparam("slot", type_=sa.SmallInteger),
            *[sa.bindparam(name, type_=table.c[name].type) for name in FIELDS],
        ).where(Community.id == sa.bindparam("community_id"))
        statement = insert_for(dialect)(table).from_select(
            ["community_id", "day", "currency", "slot", *FIELDS], source
        )
        _UPSERTS[dialect] = statement.on_conflict_do_update(
            index_elements=[table.c.community_id, table.c.day, table.c.currency, table.c.slot],
            set_={name: table.c[name] + statement.excluded[name] for name in FIELDS},
        )
    return _UPSERTS[dialect]


@event.listens_for(Engine, "connect")
def _lend_sqlite_the_zones(dbapi_connection, _record) -> None:
    """SQLite knows no time zones: ``figures_local_day(moment, zone)`` is Python's."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.create_function(
            "figures_local_day", 2, _local_day_sqlite, deterministic=True
        )


# Recomputing from the source rows ------------------------------------------------------


def _local_day_sqlite(moment: str | None, zone: str) -> str | None:
    """SQLite's ``figures_local_day(moment, zone)``: the day of a stored UTC time in zone."""
    if moment is None:
        return None
    utc = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    return utc.astimezone(ZoneInfo(zone)).date().isoformat()


def _local_day(session: Session, column, zone) -> sa.ColumnElement[str]:
    """SQL for the day (``YYYY-MM-DD``) of ``column`` in the time zone ``zone`` (a column):
    PostgreSQL knows the zones; SQLite is lent Python's (see :func:`_lend_sqlite_the_zones`)."""
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone(zone, column), "YYYY-MM-DD")
    return sa.func.figures_local_day(column, zone, type_=sa.String)


def recomputed(
    session: Session, community_ids: list[int] | None = None
) -> dict[tuple[int, date, str], list[int]]:
    """Every row's figures as the source rows say (of ``community_ids``, or all), summed
    over slots: what the hooks should have kept. ``paying`` is put on the day each paying
    member's earliest current paid membership started (when former members stopped is not
    kept anywhere; only the sum of ``paying`` can be checked)."""
    zone = Community.time_zone

    def of(column):
        return column.in_(community_ids) if community_ids is not None else sa.true()

    figures: dict[tuple[int, date, str], list[int]] = defaultdict(lambda: [0] * len(FIELDS))

    def collect(field: str, select: sa.Select) -> None:
        for community_id, day, currency, value in session.execute(select):
            figures[community_id, date.fromisoformat(day), currency][FIELDS.index(field)] += int(
                value
            )

    day = _local_day(session, LedgerEntry.created_at, zone)
    collect(
        "revenue",
        sa.select(Community.id, day, LedgerEntry.currency, sa.func.sum(LedgerEntry.amount))
        .select_from(LedgerEntry)
        .join(Order, Order.id == LedgerEntry.order_id)
        .join(Community, Community.id == Order.community_id)
        .where(of(Community.id))
        .group_by(Community.id, day, LedgerEntry.currency),
    )
    paid_tier = sa.and_(Tier.id == Membership.tier_id, Tier.kind == TierKind.PAID)
    day = _local_day(session, Membership.starts_at, zone)
    collect(
        "joined",
        sa.select(Community.id, day, sa.literal(COUNTS), sa.func.count())
        .select_from(Membership)
        .join(Tier, paid_tier)
        .join(Community, Community.id == Tier.community_id)
        .where(of(Community.id))
        .group_by(Community.id, day),
    )
    day = _local_day(session, Event.created_at, zone)
    collect(
        "ended",
        sa.select(Community.id, day, sa.literal(COUNTS), sa.func.count())
        .select_from(Event)
        .join(Community, Community.id == Event.community_id)
        .where(
            of(Community.id),
            Event.type == "membership.ended",
            Event.data["status"].as_string() != MembershipStatus.SUSPENDED.value,
        )
        .group_by(Community.id, day),
    )
    day = _local_day(session, Application.created_at, zone)
    funnel = (
        sa.select(
            Community.id,
            day,
            sa.func.count(),
            sa.func.count(Application.order_id),
            sa.func.count(Order.paid_at),
        )
        .select_from(Application)
        .join(Community, Community.id == Application.community_id)
        .outerjoin(Order, Order.id == Application.order_id)
        .where(of(Community.id))
        .group_by(Community.id, day)
    )
    for community_id, day_text, applications, orders, paid in session.execute(funnel):
        row = figures[community_id, date.fromisoformat(day_text), COUNTS]
        for field, value in (("applications", applications), ("orders", orders), ("paid", paid)):
            row[FIELDS.index(field)] += value
    first = (
        sa.select(Tier.community_id, sa.func.min(Membership.starts_at).label("since"))
        .select_from(Membership)
        .join(Tier, paid_tier)
        .where(Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES))
        .group_by(Tier.community_id, Membership.member_id)
        .subquery()
    )
    day = _local_day(session, first.c.since, zone)
    collect(
        "paying",
        sa.select(Community.id, day, sa.literal(COUNTS), sa.func.count())
        .select_from(first)
        .join(Community, Community.id == first.c.community_id)
        .where(of(Community.id))
        .group_by(Community.id, day),
    )
    return {key: values for key, values in figures.items() if any(values)}


def kept(
    session: Session, community_ids: list[int] | None = None
) -> dict[tuple[int, date, str], list[int]]:
    """The rows' figures (of ``community_ids``, or all), summed over slots."""
    columns = [sa.func.sum(getattr(DailyFigures, name)) for name in FIELDS]
    keys = (DailyFigures.community_id, DailyFigures.day, DailyFigures.currency)
    select = sa.select(*keys, *columns).group_by(*keys)
    if community_ids is not None:
        select = select.where(DailyFigures.community_id.in_(community_ids))
    rows = session.execute(select)
    return {tuple(row[:3]): [int(v) for v in row[3:]] for row in rows if any(row[3:])}


def rebuild(session: Session, community_ids: list[int] | None = None) -> int:
    """Replace the rows of ``community_ids`` (or every community) by a recomputation from
    the source rows. Called by ``flask figures-rebuild``, after bulk writes, and at the
    commit of a change of a community's time zone or a tier's kind. On PostgreSQL the
    communities' rows are locked first, so a payment committing meanwhile either is read by
    the recomputation or adds to its rows after it. Returns the rows written."""
    lock = sa.select(Community.id).order_by(Community.id).with_for_update()
    if community_ids is not None:
        lock = lock.where(Community.id.in_(community_ids))
    community_ids = list(session.scalars(lock))
    session.execute(sa.delete(DailyFigures).where(DailyFigures.community_id.in_(community_ids)))
    rows = [
        {
            "community_id": c,
            "day": d,
            "currency": cur,
            "slot": 0,
            **dict(zip(FIELDS, v, strict=True)),
        }
        for (c, d, cur), v in sorted(recomputed(session, community_ids).items())
    ]
    if rows:
        session.execute(sa.insert(DailyFigures), rows)
    return len(rows)


def disagreements(session: Session) -> Iterable[str]:
    """How the rows differ from a recomputation from the source rows: per day for every
    figure but ``paying``, whose history is not kept elsewhere (its sum per community is
    compared)."""
    expected, actual = recomputed(session), kept(session)
    paying = FIELDS.index("paying")
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for key in sorted(expected.keys() | actual.keys()):
        should = expected.get(key, [0] * len(FIELDS))
        is_ = actual.get(key, [0] * len(FIELDS))
        totals[key[0]][0] += should[paying]
        totals[key[0]][1] += is_[paying]
        for index, name in enumerate(FIELDS):
            if name != "paying" and should[index] != is_[index]:
                community_id, day, currency = key
                yield (
                    f"community {community_id}, {day} {currency or ''}: {name} is "
                    f"{is_[index]} in the daily figures, {should[index]} in the source rows"
                ).replace("  ", " ")
    for community_id, (should, is_) in sorted(totals.items()):
        if should != is_:
            yield (
                f"community {community_id}: the daily figures count {is_} paying members, "
                f"the memberships {should}"
            )


def _paying_now() -> sa.Select:
    """See :func:`paying_members`; built once (building it cost more than running it)."""
    community_id, now = sa.bindparam("community_id"), sa.bindparam("now", type_=UTCDateTime)
    counted = (
        sa.select(sa.func.coalesce(sa.func.sum(DailyFigures.paying), 0))
        .where(DailyFigures.community_id == community_id)
        .scalar_subquery()
    )
    other, other_tier = aliased(Membership), aliased(Tier)
    still = (
        sa.select(other.id)
        .join(other_tier, other_tier.id == other.tier_id)
        .where(
            other.member_id == Membership.member_id,
            other.status.in_(CURRENT_MEMBERSHIP_STATUSES),
            other_tier.kind == TierKind.PAID,
            sa.or_(other.ends_at.is_(None), other.ends_at > now),
        )
    )
    lapsed = (
        sa.select(sa.func.count(sa.distinct(Membership.member_id)))
        .join(Tier, Tier.id == Membership.tier_id)
        .where(
            Membership.status.in_(CURRENT_MEMBERSHIP_STATUSES),
            Membership.ends_at <= now,
            Tier.community_id == community_id,
            Tier.kind == TierKind.PAID,
            ~still.exists(),
        )
        .scalar_subquery()
    )
    return sa.select(counted - lapsed)


_PAYING_NOW = _paying_now()


def paying_members(session: Session, community_id: int, *, now: datetime) -> int:
    """Members with a current membership of a paid tier at ``now``: those the rows count
    (by the memberships' status), less those whose every such membership's term ran out
    before ``now`` while the worker has not swept it yet (an indexed look at the few
    current memberships past their end). One statement."""
    return int(session.scalar(_PAYING_NOW, {"community_id": community_id, "now": now}))
