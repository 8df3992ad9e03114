"""The database handle, the model base and the column types every package shares.

``db`` is bound to the app in ``create_app``. Services flush but never commit: the request
(or CLI command) that called them commits once, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import selectors
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask, current_app, g, has_request_context, request
from flask_sqlalchemy import SQLAlchemy
from psycopg import pq
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Engine,
    MetaData,
    Select,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy import Enum as EnumType
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from werkzeug.routing import IntegerConverter

#: Constraint names are stable across databases so migrations can drop them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on every database.

    Naive datetimes are refused on the way in (a naive time is a bug: whose clock?). SQLite
    has no time zones, so values are stored as naive UTC there and made aware on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_column(enum: type[Enum], length: int = 16) -> EnumType:
    """A column type that stores an enum's values (``"paid"``), not its names, as a plain
    string: readable in SQL and in check constraints, and new members need no migration
    beyond a longer ``length``."""
    return EnumType(
        enum,
        native_enum=False,
        length=length,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


#: How long a SQLite transaction waits for the write lock before giving up.
SQLITE_LOCK_WAIT_SECONDS = 30.0
#: The longest pause between two tries for it.
SQLITE_LOCK_RETRY_SECONDS = 0.002


def _serialise_sqlite_writers(engine: Engine) -> None:
    """Make SQLite transactions that may write start with ``BEGIN IMMEDIATE``, waiting
    their turn fairly, and those that only read with a plain (deferred) ``BEGIN``.

    pysqlite otherwise begins lazily at the first write, so two requests that read and then
    write (a member number, a seat in a group) can deadlock and fail with "database is
    locked" instead of waiting. Taking the write lock at BEGIN makes them queue; it also
    makes SAVEPOINTs behave, which the test suite relies on. A read-only request (see
    :func:`reads_only`) needs no lock: in WAL mode it reads its snapshot while another
    connection writes, instead of queueing behind every writer.

    SQLite's own busy handler waits longer and longer between tries (up to 100 ms), so
    under load a transaction that has waited a while keeps losing the lock to newcomers
    and a few wait for seconds (a webhook answered after WeChat Pay gave up). Trying again
    every millisecond or two instead keeps every waiter's chance equal.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(_busy_timeout(SQLITE_LOCK_WAIT_SECONDS))
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        sqlite = connection.connection.driver_connection
        connection.info["deferred"] = reads_only()
        if connection.info["deferred"]:
            sqlite.execute("BEGIN")
            return
        sqlite.execute(_busy_timeout(0))
        try:
            deadline, pause = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS, 0.0005
            while True:
                try:
                    sqlite.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                        raise OperationalError("BEGIN IMMEDIATE", (), error) from error
                time.sleep(pause)
                pause = min(pause * 2, SQLITE_LOCK_RETRY_SECONDS)
        finally:
            sqlite.execute(_busy_timeout(SQLITE_LOCK_WAIT_SECONDS))


def _busy_timeout(seconds: float) -> str:
    """How long SQLite itself waits for a lock before answering "busy"."""
    return f"PRAGMA busy_timeout = {int(seconds * 1000)}"


#: Names of what the migrations build that no model declares: search indexes whose kinds
#: (an FTS5 virtual table and its shadow tables, a GIN trigram index) a model cannot.
MIGRATION_ONLY_PREFIX = "search_"


def modelled(name: str | None, _type: str, _parent_names: dict) -> bool:
    """Alembic's ``include_name``: whether a table or index in the database is one the
    models describe, so that comparing them with the database (``flask db check``,
    autogenerate) leaves the migrations' own search indexes alone."""
    return not (name or "").startswith(MIGRATION_ONLY_PREFIX)


#: Methods whose requests read only, unless they say otherwise (:func:`take_write_lock`).
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def reads_only() -> bool:
    """Whether the work under way only reads: a GET, HEAD or OPTIONS request that has not
    called :func:`take_write_lock`. CLI commands, the queue worker and other requests
    may write, so their SQLite transactions take the write lock when they begin."""
    return has_request_context() and g.get("reads_only", False)


def read_first() -> None:
    """Called by a request that writes (a POST) but often ends having only read, such as a
    webhook delivered again: its transactions begin as a GET's do, without the write lock
    on SQLite, until it calls :func:`take_write_lock`."""
    g.reads_only = True


def take_write_lock() -> bool:
    """Called by a read-only request (a GET) that is about to write, before it reads what
    its write depends on: its transactions, from here to the end of the request, hold the
    write lock on SQLite, as those of a POST do. A read transaction already open is
    ended first (its loaded objects stay usable), since SQLite cannot turn it into a write
    once another connection has committed ("database is locked"). Changes nothing on
    PostgreSQL, whose transactions take no lock up front. Returns whether a read
    transaction was ended: what was read in it may have changed by the next one."""
    if not reads_only():
        return False
    session = db.session()
    ended = session.in_transaction() and _begun_deferred(session)
    if ended:
        end_transaction_keeping_objects()
    g.reads_only = False
    return ended


def _begun_deferred(session) -> bool:
    """Whether ``session``'s transaction began on SQLite without the write lock."""
    return session.connection().info.get("deferred", False)


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _check_reads_only(_connection, _cursor, statement: str, *_args) -> None:
    """In tests: a request marked read-only that writes without :func:`take_write_lock`
    is a bug that SQLite would show only now and then, under load, as "database is
    locked"; the suite shows it every time."""
    if reads_only() and statement.lstrip()[:7].upper().startswith(_WRITES):
        raise WriteInReadOnlyRequest(
            f"{request.method} {request.path} writes without take_write_lock(): {statement[:80]}"
        )


class WriteInReadOnlyRequest(RuntimeError):
    """A GET (or HEAD) wrote without taking the write lock first (tests only)."""


#: The largest id a row can have (ids are 32-bit INTEGER columns on PostgreSQL). A larger
#: number names no row, and neither database takes it in a comparison: SQLite's driver
#: cannot bind one past 64 bits (OverflowError), PostgreSQL says "integer out of range".
LARGEST_ID = 2**31 - 1


def row_id(text: str) -> int:
    """``text`` as a row's id, a page's number or another count a request gives: a whole
    number from 0 to :data:`LARGEST_ID`, else ValueError (so that
    ``request.args.get(key, type=row_id)`` answers its default)."""
    number = int(text)
    if not 0 <= number <= LARGEST_ID:
        raise ValueError(f"{text} is out of range")
    return number


def row_ids(texts: Iterable[str]) -> list[int]:
    """The ids among ``texts`` (see :func:`row_id`); the others left out."""
    ids = []
    for text in texts:
        with suppress(ValueError):
            ids.append(row_id(text))
    return ids


class RowIdConverter(IntegerConverter):
    """The routes' ``<int:…>``: a number past :data:`LARGEST_ID` matches no route (404)."""

    def __init__(self, url_map, *args, **kwargs) -> None:
        kwargs.setdefault("max", LARGEST_ID)
        super().__init__(url_map, *args, **kwargs)


def init_db(app: Flask) -> None:
    app.url_map.converters["int"] = RowIdConverter
    db.init_app(app)

    @app.before_request
    def _mark_reading_requests() -> None:
        g.reads_only = request.method in READING_METHODS

    with app.app_context():
        for engine in db.engines.values():
            if engine.dialect.name == "sqlite":
                _serialise_sqlite_writers(engine)
            if app.testing:
                event.listen(engine, "before_cursor_execute", _check_reads_only)


def end_transaction_keeping_objects() -> None:
    """Commit the current transaction (nothing may be pending) and keep the loaded objects
    usable, so that a call to an outside service that follows (a provider, a platform)
    runs with no transaction open: on SQLite an open transaction holds the write lock."""
    session = db.session()
    session.expire_on_commit = False
    try:
        session.commit()
    finally:
        session.expire_on_commit = True


def begin_snapshot() -> None:
    """Commit the session's work so far and begin a transaction whose reads all see the
    same committed data, so that what is read first (an export's totals) and what is read
    next (its movements) agree: PostgreSQL's REPEATABLE READ; on SQLite the transaction
    takes the write lock, even in a GET, so that nothing commits meanwhile and the worker
    processes of :func:`read_parts` read what it reads. A session joined to a transaction
    begun outside it (the test suite's) reads as that transaction does.

    On PostgreSQL the transaction's sorts and hashes may take ``EXPORT_WORK_MEM`` each: the
    server's default (4 MB) sent a million movements' join and sort to temporary files."""
    db.session.commit()
    take_write_lock()
    if not is_postgresql():
        return
    if _begins_its_own_transactions():
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    if work_mem := current_app.config["EXPORT_WORK_MEM"]:
        db.session.execute(select(func.set_config("work_mem", work_mem, True)))


def _begins_its_own_transactions() -> bool:
    """Whether the session's transactions are its own, not one begun outside it on a
    connection it was bound to (the test suite's)."""
    return isinstance(db.session.get_bind(), Engine)


def is_postgresql() -> bool:
    """Whether the app's database is PostgreSQL (else SQLite)."""
    return db.engine.dialect.name == "postgresql"


def session_dialect() -> str:
    """``postgresql`` or ``sqlite``: the database the session's statements go to."""
    return db.session.get_bind().dialect.name


def insert_for(dialect: str) -> Callable[..., Any]:
    """``dialect``'s INSERT construct, the one with ``ON CONFLICT`` (both databases)."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


#: Bytes of CSV text :func:`copy_csv` gathers before handing them on.
COPY_CHUNK_BYTES = 64 * 1024


def copy_csv(select: Select) -> Iterator[tuple[bytes, int]]:
    """``select``'s rows as CSV, written by PostgreSQL itself (``COPY … TO STDOUT``) in the
    session's transaction: chunks of whole lines (UTF-8) and how many rows each holds. Bound
    values go to the driver as they are: pass plain ones.

    PostgreSQL sends a message per row. The rows are taken from libpq as they arrive, all
    that have arrived at each wait for the socket, not one psycopg ``Copy.read()`` (with
    its wait) per row, which cost twice the client's CPU (0.65 s against 0.30 s a million
    rows, ``bench/export_revenue.py``). Left unfinished (its reader stopped), the COPY is
    cancelled and the transaction, which the cancel aborts, must be rolled back."""
    connection = db.session.connection()
    statement = select.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    driver = connection.connection.driver_connection
    if driver.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        # psycopg begins the session's transaction (at its isolation level) with the
        # first statement; the COPY goes to libpq directly, so it must not be the first.
        driver.execute("SELECT 1")
    with psycopg.ClientCursor(driver) as cursor:
        copying = cursor.mogrify(
            f"COPY ({statement}) TO STDOUT WITH (FORMAT csv)", statement.params
        )
    yield from _copy_out(driver, copying.encode())


def _copy_out(driver: psycopg.Connection, query: bytes) -> Iterator[tuple[bytes, int]]:
    """What :func:`copy_csv` reads: ``query`` (a ``COPY … TO STDOUT``) sent through
    ``driver``'s libpq connection (non-blocking, as psycopg keeps it), its rows gathered into
    chunks of :data:`COPY_CHUNK_BYTES`. A server error raises :class:`psycopg.Error`."""
    pgconn = driver.pgconn
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_READ)

        def wait() -> None:
            selector.select()
            pgconn.consume_input()

        pgconn.send_query(query)
        while pgconn.flush():  # the query did not fit in the socket's buffer at once
            selector.modify(pgconn.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
            wait()
        selector.modify(pgconn.socket, selectors.EVENT_READ)
        while pgconn.is_busy():
            wait()
        started = pgconn.get_result()
        if started is None or started.status != pq.ExecStatus.COPY_OUT:
            _finish(driver, wait, first=started)
            raise psycopg.ProgrammingError(f"{query[:40]!r}… did not start a COPY TO STDOUT")
        done = False
        try:
            chunk, rows = bytearray(), 0
            while True:
                size, data = pgconn.get_copy_data(1)
                if size > 0:
                    chunk += data
                    rows += 1
                    if len(chunk) >= COPY_CHUNK_BYTES:
                        yield bytes(chunk), rows
                        chunk, rows = bytearray(), 0
                elif size == 0:  # nothing more has arrived yet
                    wait()
                else:  # -1: the COPY is done (its result follows); -2: the link failed
                    break
            done = True
            _finish(driver, wait)
            if rows:
                yield bytes(chunk), rows
        finally:
            if not done:  # stopped early: cancel, and read what is left of the COPY
                driver.cancel_safe()
                while (size := pgconn.get_copy_data(1)[0]) >= 0:
                    if not size:
                        wait()
                _finish(driver, wait, raising=False)


def _finish(
    driver: psycopg.Connection,
    wait: Callable[[], None],
    *,
    first: pq.abc.PGresult | None = None,
    raising: bool = True,
) -> None:
    """Read a query's remaining results (``first`` already read) so that the connection
    takes the next statement; raise the first error among them (unless not ``raising``)."""
    pgconn, error, result = driver.pgconn, None, first
    while True:
        if result is not None and result.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(result, encoding=driver.info.encoding)
        while pgconn.is_busy():
            wait()
        result = pgconn.get_result()
        if result is None:
            break
    if error is not None and raising:
        raise error


def part_value(name: str) -> ColumnElement:
    """A value that each part of a :func:`read_parts` query gives it (``name`` a key of
    the part's values): a placeholder in its SQL, so that the query is compiled once for
    all its parts (a large query compiled with the values written in, once a part, was a
    tenth of an export's time)."""
    return literal_column(f":{name}")


def read_parts(
    select: Select, parts: Iterable[Mapping[str, object]], *, jobs: int = 1
) -> Iterator[list[tuple]]:
    """SQLite: the rows of ``select`` for each of ``parts`` in order, its
    :func:`part_value` placeholders given the part's values; read in this session's
    transaction, or, on a file with ``jobs`` > 1, by that many worker processes side by
    side, each part on its own read-only connection. This session's transaction holds
    SQLite's write lock meanwhile, so nothing commits and they all read what it would, if
    it has written nothing itself (see :func:`begin_snapshot`). Rows come as the driver
    gives them; other bound values are written into the query: pass plain ones (numbers,
    text, times)."""
    connection = db.session.connection()  # begins the transaction: the write lock is ours
    path = connection.engine.url.database
    sql = str(select.compile(dialect=connection.dialect, compile_kwargs=_LITERAL))
    if jobs < 2 or not _begins_its_own_transactions():
        for values in parts:
            yield [tuple(row) for row in connection.exec_driver_sql(sql, dict(values))]
        return
    if not path or path == ":memory:":
        raise ValueError("parallel reads need a SQLite file")
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with ProcessPoolExecutor(jobs) as pool:
        pending: deque = deque()
        for values in parts:
            pending.append(pool.submit(_sqlite_rows, uri, sql, dict(values)))
            if len(pending) > 2 * jobs:  # a few ahead, not every part held in memory
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_LITERAL = {"literal_binds": True, "render_postcompile": True}


def _sqlite_rows(uri: str, sql: str, values: dict[str, object]) -> list[tuple]:
    """A worker's part of :func:`read_parts`."""
    connection = sqlite3.connect(uri, uri=True)
    try:
        return connection.execute(sql, values).fetchall()
    finally:
        connection.close()
