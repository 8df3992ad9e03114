"""Alembic environment, run through Flask-Migrate (``flask db …``) inside the app.

The target is the app's metadata: every model module is imported by ``create_app``.
SQLite gets batch mode (it cannot ALTER most things in place); our ``UTCDateTime`` column
type is written into revisions as the plain ``DateTime(timezone=True)`` it stores.
"""

import logging

from alembic import context
from flask import current_app

from core.db import UTCDateTime, modelled

config = context.config
# Logged as the app logs (core.observability): alembic.ini sets no logging, which would
# replace the app's handler and level in the process that migrates (the demo's console).
logger = logging.getLogger("alembic.env")

db = current_app.extensions["migrate"].db


def render_item(type_, obj, autogen_context):
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline():
    context.configure(
        url=db.engine.url.render_as_string(hide_password=False),
        target_metadata=db.metadata,
        literal_binds=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def process_revision_directives(context, revision, directives):
        # `flask db migrate` with no change writes no empty revision.
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    engine = db.engine
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=db.metadata,
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
            include_name=modelled,
            render_item=render_item,
            process_revision_directives=process_revision_directives,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
