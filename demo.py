"""The demo in one process: ``flask demo``, which ``bin/demo`` runs.

It brings the database to the newest schema, seeds the demo community, its perks and an
owner account once, says where to go, and serves the app with Werkzeug's server from the
same process: a restart with nothing changed costs one start of Python and the app. It
uses ``membership`` and ``perks``, so it lives beside ``app.py``, above them.
"""

from __future__ import annotations

import errno
import secrets
import socket
from pathlib import Path

import click
import flask_migrate
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext
from flask_babel import gettext as _
from werkzeug.serving import run_simple

from core.auth import StaffUser, create_staff_user, set_own_password
from core.clock import utcnow
from core.db import db
from membership.cli import seed_demo_community
from perks.cli import seed_demo_perks

#: The demo's owner account; its password is made once and kept in the instance folder.
DEMO_ADMIN = "admin@example.com"


def _step(text: str) -> None:
    click.secho(f"· {text}", fg="cyan")


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _demo_admin_password() -> str:
    """The owner's password, made once and kept in the instance folder (readable by this
    user only); made again if that file was deleted."""
    saved = Path(current_app.instance_path) / "demo-admin.txt"
    if saved.exists():
        return saved.read_text().split()[-1]
    password, now = secrets.token_urlsafe(12), utcnow()
    user = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == DEMO_ADMIN))
    if user is None:
        create_staff_user(DEMO_ADMIN, _("Demo admin"), password, actor="cli")
    else:
        set_own_password(user, password, now=now)
    db.session.commit()
    saved.touch(mode=0o600)
    saved.write_text(f"{DEMO_ADMIN} {password}\n")
    return password


@click.command("demo")
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="PORT", default=5000, type=int, show_default=True)
@with_appcontext
def demo_command(host: str, port: int) -> None:
    """Set up the demo (database, community, admin) and serve it on HOST:PORT."""
    if _port_taken(host, port):
        raise click.ClickException(
            _(
                "Port %(port)s is in use (another demo?). Choose another: PORT=%(other)s bin/demo",
                port=port,
                other=port + 1,
            )
        )
    _step(_("Database: bringing it to the newest schema"))
    flask_migrate.upgrade()
    _step(_("The demo community, its perks and an admin account (made once)"))
    slug = seed_demo_community().slug
    db.session.commit()
    seed_demo_perks()
    db.session.commit()
    password = _demo_admin_password()
    # Nothing of this session may stay open while serving: on SQLite an open transaction
    # holds the write lock every request and the queue worker wait for.
    db.session.remove()
    base = current_app.config["PUBLIC_BASE_URL"]
    join_page, admin_page = f"{base}/join/{slug}", f"{base}/admin/"
    click.echo()
    click.secho(_("Qunmen demo"), bold=True)
    click.echo(_("Join page: %(url)s", url=join_page))
    click.echo(
        _(
            "Admin: %(url)s  (%(email)s / %(password)s)",
            url=admin_page,
            email=DEMO_ADMIN,
            password=password,
        )
    )
    click.echo(_("Login codes and other messages to members are printed here, in this console."))
    click.echo()
    run_simple(host, port, current_app._get_current_object(), threaded=True)
