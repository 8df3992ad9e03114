"""Production fails closed: the settings it refuses to start without, the fake provider
only in the demo, booleans that mean what they say, the demo's files private."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator

import pytest

import config as settings
from app import Qunmen, create_app
from config import SettingError
from tests import fake_apis

#: Every setting these tests set or expect unset, cleared before each test.
SETTINGS = (
    "QUNMEN_DEMO",
    "SECRET_KEY",
    "PUBLIC_BASE_URL",
    "PAYMENT_PROVIDERS",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "WECHATPAY_APP_ID",
    "WECHATPAY_MCH_ID",
    "WECHATPAY_API_KEY",
    "SESSION_COOKIE_SECURE",
    "MAIL_USE_TLS",
    "OUTBOX_TO_LOG",
    "QUEUE_IN_PROCESS",
    "DATABASE_URL",
    "LOG_LEVEL",
    "EXPORT_WORK_MEM",
)


@pytest.fixture
def environment(monkeypatch, tmp_path) -> Iterator[pytest.MonkeyPatch]:
    """A production environment with everything it needs (Stripe as the provider); tests
    change or remove one setting. The root logger, which a production app takes over, is
    restored afterwards."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_KEY", "a-production-secret-key")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://join.example.com")
    monkeypatch.setenv("STRIPE_SECRET_KEY", fake_apis.STRIPE_SECRET_KEY)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", fake_apis.STRIPE_WEBHOOK_SECRET)
    monkeypatch.setenv("QUEUE_IN_PROCESS", "0")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'production.sqlite3'}")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield monkeypatch
    root.handlers[:] = handlers
    root.setLevel(level)


def test_production_starts_with_its_settings(environment):
    app = create_app()
    assert not app.testing and not app.config["QUNMEN_DEMO"]
    assert list(app.extensions["qunmen.payment_providers"]) == ["stripe"]


@pytest.mark.parametrize("name", ["SECRET_KEY", "PUBLIC_BASE_URL"])
def test_production_refuses_to_start_without(environment, name):
    environment.delenv(name)
    with pytest.raises(SettingError, match=f"{name} is not set"):
        create_app()


def test_production_refuses_to_start_without_a_real_payment_provider(environment):
    environment.delenv("STRIPE_SECRET_KEY")
    environment.delenv("STRIPE_WEBHOOK_SECRET")
    with pytest.raises(SettingError, match="no payment provider is configured"):
        create_app()


@pytest.mark.parametrize("demo", ["0", "1"])
def test_the_fake_provider_is_never_next_to_a_real_one(environment, demo):
    environment.setenv("QUNMEN_DEMO", demo)
    environment.setenv("PAYMENT_PROVIDERS", "stripe,fake")
    with pytest.raises(SettingError, match="PAYMENT_PROVIDERS"):
        create_app()


def test_the_fake_provider_only_in_the_demo(environment):
    environment.setenv("PAYMENT_PROVIDERS", "fake")
    with pytest.raises(SettingError, match="QUNMEN_DEMO"):
        create_app()


def test_production_refuses_to_log_messages(environment):
    environment.setenv("OUTBOX_TO_LOG", "1")
    with pytest.raises(SettingError, match="OUTBOX_TO_LOG"):
        create_app()


def test_public_base_url_must_be_a_base_url(environment):
    environment.setenv("PUBLIC_BASE_URL", "join.example.com")
    with pytest.raises(SettingError, match="PUBLIC_BASE_URL"):
        create_app()


def test_production_cookies_are_secure_and_send_hsts(environment):
    app = create_app()
    assert app.config["SESSION_COOKIE_SECURE"] is True
    response = app.test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_the_demo_starts_with_no_settings(environment, tmp_path):
    for name in ("SECRET_KEY", "PUBLIC_BASE_URL", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
        environment.delenv(name)
    environment.setenv("QUNMEN_DEMO", "yes")
    # The demo keeps its secret key in its instance folder: a scratch one here.
    instance = str(tmp_path / "instance")
    environment.setattr(Qunmen, "auto_find_instance_path", lambda self: instance)
    app = create_app()
    assert list(app.extensions["qunmen.payment_providers"]) == ["fake"]
    assert app.config["PUBLIC_BASE_URL"] == settings.DEMO_BASE_URL
    assert app.config["SECRET_KEY"]
    # The demo runs on http://127.0.0.1: cookies that need https would never come back.
    assert app.config["SESSION_COOKIE_SECURE"] is False
    assert "Strict-Transport-Security" not in app.test_client().get("/healthz").headers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True)],
        *[("0", False), ("false", False), ("False", False), ("NO", False), ("off", False)],
    ],
)
def test_booleans_mean_what_they_say(environment, raw, expected):
    environment.setenv("SESSION_COOKIE_SECURE", raw)
    environment.setenv("MAIL_USE_TLS", raw)
    app = create_app()
    assert app.config["SESSION_COOKIE_SECURE"] is expected
    assert app.config["MAIL_USE_TLS"] is expected


@pytest.mark.parametrize("name", ["SESSION_COOKIE_SECURE", "MAIL_USE_TLS", "QUNMEN_DEMO"])
def test_a_boolean_that_is_not_one_stops_startup(environment, name):
    environment.setenv(name, "ture")
    with pytest.raises(SettingError, match=f"{name}='ture' is not a boolean"):
        create_app()


def test_a_malformed_number_stops_startup_with_its_name(environment):
    environment.setenv("TRUSTED_PROXIES", "one")
    with pytest.raises(SettingError, match="TRUSTED_PROXIES"):
        create_app()


@pytest.mark.parametrize("value", ["64 MB", "64", "0MB", "lots"])
def test_a_malformed_export_memory_stops_startup(environment, value):
    environment.setenv("EXPORT_WORK_MEM", value)
    with pytest.raises(SettingError, match="EXPORT_WORK_MEM"):
        create_app()


def test_the_demo_files_are_private(tmp_path):
    """The instance folder, the SQLite file and the secret key: the owner's only, whatever
    the umask (the demo's database holds members' contacts)."""
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o755)
    config = {
        "QUNMEN_DEMO": True,
        "SECRET_KEY": None,
        "PUBLIC_BASE_URL": None,
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'qunmen.sqlite3'}",
    }
    settings.complete(config, instance)
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert stat.S_IMODE((instance / "qunmen.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((instance / "secret_key").stat().st_mode) == 0o600
    assert (instance / "secret_key").read_text() == config["SECRET_KEY"]


def test_production_refuses_webhooks_to_private_addresses(environment):
    environment.setenv("WEBHOOKS_ALLOW_PRIVATE_URLS", "1")
    with pytest.raises(SettingError, match="WEBHOOKS_ALLOW_PRIVATE_URLS"):
        create_app()


@pytest.mark.parametrize(
    ("url", "pinged"),
    [("postgresql+psycopg://qunmen@db.internal/qunmen", True), ("sqlite:///qunmen.db", False)],
    ids=["PostgreSQL", "SQLite"],
)
def test_pooled_connections_are_pinged_where_a_server_can_drop_them(environment, url, pinged):
    """A PostgreSQL connection from the pool is checked before use (the server or PgBouncer
    may have closed it); a SQLite file is not, which cost a statement a transaction."""
    environment.setenv("DATABASE_URL", url)
    app = create_app()
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("pool_pre_ping", False) is pinged
