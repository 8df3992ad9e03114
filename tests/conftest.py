"""Fixtures: one app per test session on a migrated database, a rollback per test.

The database is ``TEST_DATABASE_URL`` when set (``bin/with-postgres`` sets it to a
throwaway PostgreSQL) and a SQLite file otherwise. The schema comes from the migrations,
never from ``create_all``. Each test runs inside a transaction that is rolled back at its
end; the code under test commits into savepoints of it. Tests marked ``committing`` get an
app and database of their own (see ``fresh_database``) because they commit for real from
several threads.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import flask_migrate
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from core.auth import StaffUser, create_staff_user
from core.db import db
from membership.cli import seed_demo_community
from membership.models import Community
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, log_in

SECRET_KEY = "test-secret-key-not-for-production"


def app_config(database_url: str) -> dict[str, object]:
    return {
        "TESTING": True,
        "SECRET_KEY": SECRET_KEY,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "PAYMENT_PROVIDERS": ["fake"],
        "FAKE_PROVIDER_SECRET": None,
        "SERVER_NAME": "qunmen.test",
    }


def reset_schema(app: Flask) -> None:
    """Drop whatever an earlier run left, then build the schema with the migrations."""
    with app.app_context():
        engine = db.engine
        if engine.dialect.name == "postgresql":
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        flask_migrate.upgrade()


def dispose_engines(app: Flask) -> None:
    """Close the app's pooled connections (open ones would warn at exit)."""
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@contextmanager
def fresh_database(tmp_path) -> Iterator[Flask]:
    """An app on a database of its own that commits for real: a new SQLite file, or a new
    database on the PostgreSQL server of ``TEST_DATABASE_URL``."""
    base = os.environ.get("TEST_DATABASE_URL")
    if base is None:
        app = create_app(app_config(f"sqlite:///{tmp_path / 'committing.sqlite3'}"))
        try:
            reset_schema(app)
            yield app
        finally:
            dispose_engines(app)
        return
    name = f"qunmen_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(base).set(database=name)
    app = create_app(app_config(url.render_as_string(hide_password=False)))
    try:
        reset_schema(app)
        yield app
    finally:
        dispose_engines(app)
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin_engine.dispose()


@pytest.fixture(scope="session")
def app(tmp_path_factory) -> Iterator[Flask]:
    url = os.environ.get("TEST_DATABASE_URL") or (
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    )
    app = create_app(app_config(url))
    reset_schema(app)
    # Code under test commits; in tests those commits end savepoints of the test's
    # transaction instead, so the rollback at the end undoes them.
    with app.app_context():
        db.session.configure(join_transaction_mode="create_savepoint")
    yield app
    dispose_engines(app)


@pytest.fixture(autouse=True)
def _rollback(request, app: Flask) -> Iterator[None]:
    """Run the test in a transaction that is rolled back afterwards.

    The app's engines are swapped for one connection inside a transaction; every session
    (each request's, each ``app.app_context()`` block's) binds to it. No app context stays
    pushed during the test: Flask would make each request reuse it, sharing ``g`` and the
    session between requests in a way no real deployment does.
    """
    if request.node.get_closest_marker("committing"):
        yield
        return
    with app.app_context():
        engines = db.engines
    originals = dict(engines)
    held = []
    for key, engine in originals.items():
        connection = engine.connect()
        held.append((connection, connection.begin()))
        engines[key] = connection
    try:
        yield
    finally:
        for connection, transaction in held:
            transaction.rollback()
            connection.close()
        engines.update(originals)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


@pytest.fixture
def demo(app: Flask) -> Community:
    """The demo community (lobby, ¥99 main, ¥9 re-entry, two groups), committed into the
    test's transaction. Query it again inside a request: this instance is detached."""
    with app.app_context():
        community = seed_demo_community()
        db.session.commit()
        db.session.refresh(community)
        db.session.expunge_all()
        return community


@pytest.fixture
def admin(app: Flask) -> StaffUser:
    with app.app_context():
        user = create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
        db.session.commit()
        db.session.refresh(user)
        db.session.expunge(user)
        return user


@pytest.fixture
def logged_in(client: FlaskClient, admin: StaffUser) -> FlaskClient:
    assert log_in(client).status_code == 302
    return client
