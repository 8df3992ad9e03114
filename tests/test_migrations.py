"""The schema comes from the migrations, and the migrations match the models."""

from __future__ import annotations

import flask_migrate
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.db import db
from tests.conftest import fresh_database


def schema_drift() -> list:
    """What autogenerate would add to a new revision: should be nothing (app context)."""
    context = MigrationContext.configure(db.session.connection(), opts={"compare_type": True})
    return compare_metadata(context, db.metadata)


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
