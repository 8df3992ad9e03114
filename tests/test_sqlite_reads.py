"""SQLite: read-only requests read beside a writer instead of queueing for the write lock;
requests that write take it before they read, and still work among concurrent writers."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa

from core import db as core_db
from core.auth import create_staff_user
from core.clock import utcnow
from core.db import db
from membership.cli import seed_demo_community
from membership.models import Community, ContactKind, Member, PageVisits
from payments.models import Payment
from tests.conftest import fresh_database
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, log_in, signed_notification, submit_join
from tests.test_concurrency import _serve

pytestmark = [
    pytest.mark.committing,
    pytest.mark.skipif(
        bool(os.environ.get("TEST_DATABASE_URL")), reason="SQLite's locks: SQLite only"
    ),
]


def _database_file(app) -> str:
    with app.app_context():
        return db.engine.url.database


def _seed(app) -> int:
    with app.app_context():
        community = seed_demo_community()
        create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
        db.session.add(
            Member(
                community_id=community.id,
                display_name="读者",
                contact_kind=ContactKind.WECHAT,
                contact_value="wx_reader",
                created_at=utcnow(),
            )
        )
        db.session.commit()
        return community.id


def test_a_read_only_page_is_served_while_another_connection_holds_the_write_lock(
    tmp_path, _api_server, monkeypatch
):
    # Waiting for the lock gives up after a second here, not 30: a page that still
    # queued for it fails fast instead of slowly.
    monkeypatch.setattr(core_db, "SQLITE_LOCK_WAIT_SECONDS", 1.0)
    with fresh_database(tmp_path, _api_server) as app:
        community_id = _seed(app)
        client = app.test_client()
        assert log_in(client).status_code == 302
        writer = sqlite3.connect(_database_file(app), isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute(
                "UPDATE members SET display_name = '写了一半' WHERE contact_value = 'wx_reader'"
            )
            started = time.monotonic()
            page = client.get(f"/admin/communities/{community_id}/members")
            elapsed = time.monotonic() - started
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert page.status_code == 200
    assert "读者" in page.text and "写了一半" not in page.text  # what was committed
    assert elapsed < 0.9  # it did not wait for the lock


def test_a_webhook_delivered_again_is_answered_while_another_connection_writes(
    tmp_path, _api_server, monkeypatch
):
    """A provider delivering an applied event again (our answer was lost) is answered from
    a read: it does not queue for the write lock behind the payments coming in."""
    monkeypatch.setattr(core_db, "SQLITE_LOCK_WAIT_SECONDS", 1.0)
    with fresh_database(tmp_path, _api_server) as app:
        _seed(app)
        client = app.test_client()
        assert submit_join(client, "main").status_code == 302
        with app.app_context():
            payment = db.session.scalars(sa.select(Payment)).one()
            body, headers = signed_notification(payment, event_id="evt_lost_answer")
        assert client.post("/webhooks/fake", data=body, headers=headers).status_code == 200
        writer = sqlite3.connect(_database_file(app), isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE communities SET pitch = pitch")
            started = time.monotonic()
            again = client.post("/webhooks/fake", data=body, headers=headers)
            elapsed = time.monotonic() - started
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert again.status_code == 200
    assert again.json["message"].startswith("applied as event ")
    assert elapsed < 0.9  # it did not wait for the lock


def test_a_get_that_writes_takes_the_lock_among_concurrent_writers(tmp_path, _api_server, caplog):
    """The join page adds its visits (every visit here: VISIT_FLUSH_SECONDS is 0) while
    other connections write all the time: each visit is written, none fails."""
    readers, visits_each = 4, 15
    with fresh_database(tmp_path, _api_server) as app:
        community_id = _seed(app)
        path = _database_file(app)
        server, base = _serve(app)
        stop = threading.Event()

        def write_all_the_time() -> int:
            connection = sqlite3.connect(path, isolation_level=None, timeout=30)
            writes = 0
            try:
                while not stop.is_set():
                    connection.execute("BEGIN IMMEDIATE")
                    connection.execute(
                        "UPDATE communities SET pitch = pitch WHERE id = ?", (community_id,)
                    )
                    time.sleep(0.002)  # a transaction that holds the lock a while
                    connection.execute("COMMIT")
                    writes += 1
            finally:
                connection.close()
            return writes

        def visit(_) -> list[int]:
            session = requests.Session()
            return [
                session.get(
                    f"{base}/join/demo", headers={"Host": "qunmen.test"}, timeout=60
                ).status_code
                for _ in range(visits_each)
            ]

        caplog.set_level(logging.WARNING, logger="membership.visits")
        try:
            with ThreadPoolExecutor(max_workers=2 + readers) as pool:
                writers = [pool.submit(write_all_the_time) for _ in range(2)]
                statuses = [s for result in pool.map(visit, range(readers)) for s in result]
                stop.set()
                writes = sum(w.result() for w in writers)
        finally:
            stop.set()
            server.shutdown()
        with app.app_context():
            counted = db.session.scalar(
                sa.select(sa.func.sum(PageVisits.visits)).where(
                    PageVisits.community_id == community_id
                )
            )
            assert db.session.get(Community, community_id) is not None
    assert statuses == [200] * (readers * visits_each)
    assert writes > 10  # the writers did write meanwhile
    assert not [r for r in caplog.records if "not written" in r.getMessage()]
    assert counted == readers * visits_each
