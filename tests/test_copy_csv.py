"""How an export reads PostgreSQL. Its COPY, read from libpq directly
(``core.db.copy_csv``), gives the bytes psycopg's own COPY gives, in chunks of whole lines
with their counts; a server error in the middle raises and leaves the connection usable
after a rollback; a reader that stops early cancels the COPY, and the connection takes the
next statement; a COPY first in its transaction reads in the export's snapshot. The
export's transaction sorts and hashes in ``EXPORT_WORK_MEM``, that transaction only."""

from __future__ import annotations

import os

import psycopg
import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import COPY_CHUNK_BYTES, begin_snapshot, copy_csv, db, is_postgresql
from core.limits import AttemptCounter
from tests.conftest import fresh_database

#: Enough rows for several chunks, each line holding text that needs quoting.
ROWS = 20_000


def _numbers(last: int = ROWS, divide_by_zero_at: int | None = None) -> sa.Select:
    """``1..last`` with a quoted text each; the row ``divide_by_zero_at`` fails."""
    i = sa.func.generate_series(1, last).column_valued("i")
    divisor = i - divide_by_zero_at if divide_by_zero_at else sa.literal(1)
    return sa.select(i, sa.literal('读书会, "正式"\n') + sa.cast(i, sa.Text), 1 / divisor)


@pytest.fixture
def pg(app):
    with app.app_context():
        if not is_postgresql():
            pytest.skip("COPY is PostgreSQL's")
        yield


def test_the_chunks_are_what_psycopg_copies(app, pg):
    chunks = list(copy_csv(_numbers()))
    connection = db.session.connection()
    statement = _numbers().compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    with connection.connection.driver_connection.cursor() as cursor:
        copying = f"COPY ({statement}) TO STDOUT WITH (FORMAT csv)"
        with cursor.copy(copying, statement.params) as copy:
            expected = b"".join(bytes(row) for row in copy)
    assert len(chunks) > 2
    assert b"".join(chunk for chunk, _ in chunks) == expected
    assert sum(rows for _, rows in chunks) == ROWS
    for chunk, rows in chunks:
        assert chunk.endswith(b"\n")
        assert chunk.count(b'"\n') == rows  # each line's quoted cell ends it
        assert len(chunk) < COPY_CHUNK_BYTES + 200


def test_an_error_in_the_middle_raises_and_a_rollback_recovers(app, pg):
    with pytest.raises(psycopg.errors.DivisionByZero):
        for _ in copy_csv(_numbers(divide_by_zero_at=ROWS // 2)):
            pass
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.literal(7))) == 7


def test_a_reader_that_stops_early_cancels_the_copy(app, pg):
    lines = copy_csv(_numbers(last=2_000_000))
    _, rows = next(lines)
    assert 0 < rows < 2_000_000
    lines.close()
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.literal(7))) == 7


@pytest.mark.committing
def test_a_copy_first_in_its_transaction_reads_in_its_snapshot(tmp_path, _api_server):
    """The COPY goes to libpq directly, so psycopg must have begun the session's
    transaction (REPEATABLE READ, :func:`begin_snapshot`) before it: a row committed
    elsewhere after the COPY is not seen by the next statement either."""
    if "TEST_DATABASE_URL" not in os.environ:
        pytest.skip("COPY is PostgreSQL's")
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        begin_snapshot()
        [(chunk, _)] = copy_csv(sa.select(sa.func.count(AttemptCounter.key)))
        with app.app_context():  # another session, another connection
            db.session.add(AttemptCounter(key="test:copy", window_start=utcnow(), count=1))
            db.session.commit()
        assert db.session.scalar(sa.select(sa.func.count(AttemptCounter.key))) == int(chunk)


@pytest.mark.committing
@pytest.mark.parametrize("setting", ["96MB", ""])
def test_an_export_sorts_in_its_own_memory_for_its_transaction_only(tmp_path, _api_server, setting):
    if "TEST_DATABASE_URL" not in os.environ:
        pytest.skip("work_mem is PostgreSQL's")
    with fresh_database(tmp_path, _api_server, EXPORT_WORK_MEM=setting) as app, app.app_context():
        server_default = db.session.scalar(sa.text("SHOW work_mem"))
        begin_snapshot()
        assert db.session.scalar(sa.text("SHOW work_mem")) == (setting or server_default)
        db.session.commit()
        assert db.session.scalar(sa.text("SHOW work_mem")) == server_default
