"""``flask demo`` (bin/demo): one process that sets the demo up and serves it."""

from __future__ import annotations

import logging
import socket
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

import demo
from core.auth import StaffUser
from core.db import db
from membership.models import Community
from tests.conftest import fresh_database


def test_a_busy_port_is_named_with_the_fix(app):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = app.test_cli_runner().invoke(demo.demo_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"PORT={port + 1} bin/demo" in result.output
    assert str(port) in result.output


@pytest.mark.committing
def test_a_second_start_sets_nothing_up_again(tmp_path, _api_server, monkeypatch):
    """The database upgraded, the community, perks and admin made once; the password kept
    in the instance folder for its owner only; the same app served on the asked port, with
    no session left open (on SQLite its transaction would hold the write lock while
    serving, and every request would wait for it)."""
    served = []

    def serve(*args, **kwargs):
        served.append((*args[1:], db.session.registry.has()))

    monkeypatch.setattr(demo, "run_simple", serve)
    with fresh_database(tmp_path, _api_server) as app:
        app.instance_path = str(tmp_path)
        runner = app.test_cli_runner()
        first = runner.invoke(demo.demo_command, ["--port", "0"])
        second = runner.invoke(demo.demo_command, ["--port", "0"])
        assert first.exit_code == second.exit_code == 0, first.output + second.output
        saved = Path(tmp_path, "demo-admin.txt")
        email, password = saved.read_text().split()
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert password in first.output and password in second.output
        assert "群门演示" in first.output  # in QUNMEN_LOCALE, Chinese by default
        assert served == [(0, app, False), (0, app, False)]
        with app.app_context():
            assert db.session.scalar(sa.select(sa.func.count()).select_from(Community)) == 1
            admin = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == email))
            assert admin.check_password(password)


@pytest.mark.committing
def test_the_console_still_shows_login_codes_after_the_migrations(
    tmp_path, _api_server, monkeypatch
):
    """The demo prints login codes to its console (``OUTBOX_TO_LOG``, at INFO) after it
    has migrated in the same process: the migrations leave the app's logging as it was
    (alembic.ini's logging setup once put the root logger at WARN with a handler of its
    own, and no code reached the console)."""
    monkeypatch.setattr(demo, "run_simple", lambda *args, **kwargs: None)
    root = logging.getLogger()
    console = logging.StreamHandler()
    monkeypatch.setattr(root, "handlers", [*root.handlers, console])
    monkeypatch.setattr(root, "level", logging.INFO)
    with fresh_database(tmp_path, _api_server) as app:
        app.instance_path = str(tmp_path)
        result = app.test_cli_runner().invoke(demo.demo_command, ["--port", "0"])
    assert result.exit_code == 0, result.output
    assert console in root.handlers
    assert logging.getLogger("core.outbox").isEnabledFor(logging.INFO)
