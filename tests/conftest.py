"""Fixtures: one app per test session on a migrated database, a rollback per test.

The database is ``TEST_DATABASE_URL`` when set (``bin/with-postgres`` sets it to a
throwaway PostgreSQL) and a SQLite file otherwise. The schema comes from the migrations,
never from ``create_all``. Each test runs inside a transaction that is rolled back at its
end; the code under test commits into savepoints of it. Tests marked ``committing`` get an
app and database of their own (see ``fresh_database``) because they commit for real from
several threads.
"""

from __future__ import annotations

import base64
import itertools
import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask_migrate
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from core import audit, clock
from core.auth import StaffUser, create_staff_user
from core.catalogs import compile_catalogs
from core.clock import utcnow
from core.db import db
from membership.checks import figures_agree, seats_agree
from membership.cli import seed_demo_community
from membership.models import Community
from tests import fake_apis
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, log_in

SECRET_KEY = "test-secret-key-not-for-production"


def pytest_sessionstart(session) -> None:
    """The pages read compiled catalogs: build them from the ``.po`` files as they are."""
    compile_catalogs(Path(__file__).resolve().parent.parent / "translations")


def merchant_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate and key, standing in for the WeChat Pay merchant's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fake_apis.WECHAT_MCH_ID)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "apiclient_cert.pem", folder / "apiclient_key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def app_config(database_url: str, apis: fake_apis.FakeAPIs, certs: tuple[str, str]):
    """The test app's settings: every provider on, the real ones pointed at the fakes.

    Production's checks apply (SECRET_KEY, PUBLIC_BASE_URL, booleans) but one: ``TESTING``
    lets the fake provider run next to the real ones, which production refuses."""
    return {
        "TESTING": True,
        "SECRET_KEY": SECRET_KEY,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "PAYMENT_PROVIDERS": ["fake", "wechatpay", "stripe"],
        "FAKE_PROVIDER_SECRET": None,
        "SERVER_NAME": "qunmen.test",
        "PUBLIC_BASE_URL": "http://qunmen.test",
        "STRIPE_SECRET_KEY": fake_apis.STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": fake_apis.STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": apis.base_url,
        "WECHATPAY_APP_ID": fake_apis.WECHAT_APP_ID,
        "WECHATPAY_APP_SECRET": fake_apis.WECHAT_APP_SECRET,
        "WECHATPAY_MCH_ID": fake_apis.WECHAT_MCH_ID,
        "WECHATPAY_API_KEY": fake_apis.WECHAT_API_KEY,
        "WECHATPAY_MCH_CERT": certs[0],
        "WECHATPAY_MCH_KEY": certs[1],
        "WECHATPAY_API_BASE": apis.base_url,
        "WECHAT_API_BASE": apis.base_url,
        "TELEGRAM_BOT_TOKEN": fake_apis.TELEGRAM_BOT_TOKEN,
        "TELEGRAM_API_BASE": apis.base_url,
        "TELEGRAM_WEBHOOK_SECRET": "telegram-webhook-secret",
        "OUTBOX_TO_LOG": True,
        # The tests' loopback servers speak plain http: cookies must travel without TLS.
        "SESSION_COOKIE_SECURE": False,
        "VISIT_FLUSH_SECONDS": 0,
        "WECOM_CORP_ID": fake_apis.WECOM_CORP_ID,
        "WECOM_SECRET": fake_apis.WECOM_SECRET,
        "WECOM_CALLBACK_TOKEN": fake_apis.WECOM_CALLBACK_TOKEN,
        "WECOM_ENCODING_AES_KEY": fake_apis.WECOM_ENCODING_AES_KEY,
        "WECOM_API_BASE": f"{apis.base_url}/wecom",
    }


@pytest.fixture(scope="session")
def _api_server(tmp_path_factory):
    state, server = fake_apis.start()
    certs = merchant_certificate(tmp_path_factory.mktemp("merchant"))
    yield state, certs
    server.shutdown()
    server.server_close()


@pytest.fixture
def apis(_api_server) -> fake_apis.FakeAPIs:
    """The fake Stripe and WeChat Pay APIs, emptied for each test."""
    state, _certs = _api_server
    state.reset()
    return state


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
def fresh_database(tmp_path, api_server, **overrides) -> Iterator[Flask]:
    """An app on a database of its own that commits for real: a new SQLite file, or a new
    database on the PostgreSQL server of ``TEST_DATABASE_URL``. ``overrides`` change
    settings."""
    base = os.environ.get("TEST_DATABASE_URL")
    if base is None:
        sqlite_url = f"sqlite:///{tmp_path / 'committing.sqlite3'}"
        app = create_app(app_config(sqlite_url, *api_server) | overrides)
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
    app = create_app(app_config(url.render_as_string(hide_password=False), *api_server) | overrides)
    try:
        reset_schema(app)
        yield app
    finally:
        dispose_engines(app)
        with admin_engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin_engine.dispose()


@pytest.fixture(scope="session")
def app(tmp_path_factory, _api_server) -> Iterator[Flask]:
    url = os.environ.get("TEST_DATABASE_URL") or (
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    )
    app = create_app(app_config(url, *_api_server))
    reset_schema(app)
    # Code under test commits; in tests those commits end savepoints of the test's
    # transaction instead, so the rollback at the end undoes them.
    with app.app_context():
        db.session.configure(join_transaction_mode="create_savepoint")
    yield app
    dispose_engines(app)


@pytest.fixture(autouse=True)
def _audit_details_have_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """In every test, each detail an audit entry records has a label on the audit log
    (:func:`core.audit.register_details`): a key without one would reach the page as it
    is, a code in English on a Chinese page."""
    entry = audit._entry

    def labelled(action, table, row_id, actor, data, *rest):
        unlabelled = sorted(set(data or ()) - set(audit._DETAIL_LABELS))
        assert not unlabelled, f"{action} records details with no label: {unlabelled}"
        return entry(action, table, row_id, actor, data, *rest)

    monkeypatch.setattr(audit, "_entry", labelled)


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
        _seat_counters_agree(app)
        _daily_figures_agree(app)
    finally:
        for connection, transaction in held:
            transaction.rollback()
            connection.close()
        engines.update(originals)


def _seat_counters_agree(app: Flask) -> None:
    """Every group's seat counter equals its live invitations, whatever the test did (the
    check ``flask check`` runs): the counter admissions read and the count it stands for
    agree on every path the suite walks."""
    with app.app_context():
        findings = [f for f in seats_agree(utcnow()) if "seat counter" in f]
    assert findings == [], findings


def _daily_figures_agree(app: Flask) -> None:
    """Every community's daily figures equal a recomputation from the rows they count,
    whatever the test did (the check ``flask check`` runs): the hooks that keep them and
    the aggregates they stand for agree on every path the suite walks."""
    with app.app_context():
        findings = list(figures_agree(utcnow()))
    assert findings == [], findings


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


@pytest.fixture
def repeatable(monkeypatch):
    """One instant for every ``utcnow()`` and tokens counted, not drawn: two runs of the
    same steps write the same values."""
    now = datetime.now(UTC).replace(microsecond=0)
    real = clock.utcnow
    for module in list(sys.modules.values()):
        if getattr(module, "utcnow", None) is real:
            monkeypatch.setattr(module, "utcnow", lambda: now)

    def counted(nbytes=None):
        nbytes = nbytes or 32
        number = next(counter).to_bytes(nbytes, "big")
        return base64.urlsafe_b64encode(number).rstrip(b"=").decode()

    def reset():
        nonlocal counter
        counter = itertools.count(1)

    counter = itertools.count(1)
    monkeypatch.setattr(secrets, "token_urlsafe", counted)
    return now, reset
