"""The schema comes from the migrations, and the migrations match the models."""

from __future__ import annotations

import warnings

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.db import db, modelled
from tests.conftest import fresh_database


def schema_drift() -> list:
    """What autogenerate would add to a new revision: should be nothing (app context).

    SQLite's reflection cannot read expression indexes (alembic and SQLAlchemy warn and
    skip them); PostgreSQL's can, and compares them. On SQLite the one there is, is
    checked by name instead."""
    connection = db.session.connection()
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": modelled}
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*expression-based index")
        drift = compare_metadata(context, db.metadata)
    if connection.dialect.name == "sqlite":
        indexes = sa.text("SELECT name FROM sqlite_master WHERE type = 'index'")
        if "ix_members_listed" not in connection.execute(indexes).scalars().all():
            drift.append(("missing expression index", "ix_members_listed"))
    return drift


def test_models_match_the_migrations(app):
    with app.app_context():
        assert schema_drift() == []


@pytest.mark.committing
def test_downgrade_to_nothing_and_back(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        flask_migrate.downgrade(revision="base")
        tables = set(sa.inspect(db.session.connection()).get_table_names())
        assert tables <= {"alembic_version"}
        db.session.rollback()
        flask_migrate.upgrade()
        assert schema_drift() == []
