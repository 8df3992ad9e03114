"""members search indexes: trigram, number label

The admin's search box finds part of a nickname, contact or WeChat ID with LIKE '%…%',
which read every member of the community (117 ms on SQLite, 149 ms on PostgreSQL at
100,000 members). Each database gets a trigram index for those three columns, filled
here for the members there are:

- PostgreSQL: the ``pg_trgm`` extension (created if missing: Debian's postgresql package
  ships it, and since PostgreSQL 13 it is a trusted extension, so the database's owner
  may create it without being a superuser) and a GIN index per column, which serves the
  ILIKE the search runs as it is;
- SQLite: an FTS5 table with the ``trigram`` tokenizer (SQLite 3.34 or newer), its text
  read from ``members`` (external content), kept by triggers on ``members`` for every
  insert, update and delete, bulk ones included.

Names start with ``search_``: no model declares them, and schema comparisons leave them
alone (``core.db.modelled``). A later migration that rebuilds ``members`` on SQLite
(batch mode copies it into a new table) drops these triggers with the old table: it must
run ``_create_sqlite_triggers`` again (the search tests fail otherwise).

Also an index for a member number as the search box takes it (``0042``).

Revision ID: d2e3f4a5b6c7
Revises: c1d2e3f4a5b6
Create Date: 2026-12-02 06:43:33.364423

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'd2e3f4a5b6c7'
down_revision = 'c1d2e3f4a5b6'
branch_labels = None
depends_on = None

COLUMNS = ("display_name", "contact_value", "wechat_id")


def upgrade():
    op.create_index(
        op.f('ix_members_community_id_number_label'),
        'members',
        ['community_id', 'number_label'],
        unique=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in COLUMNS:
            op.execute(
                f"CREATE INDEX search_members_{column} ON members"
                f" USING gin ({column} gin_trgm_ops)"
            )
        return
    columns = ", ".join(COLUMNS)
    op.execute(
        f"CREATE VIRTUAL TABLE search_members USING fts5({columns},"
        " content='members', content_rowid='id', tokenize='trigram')"
    )
    _create_sqlite_triggers()
    # The members there are: read from the content table.
    op.execute("INSERT INTO search_members(search_members) VALUES ('rebuild')")


def _create_sqlite_triggers():
    """The triggers that keep ``search_members`` as ``members`` changes. An external
    content table is told what to forget with the old values themselves."""
    columns = ", ".join(COLUMNS)
    new = ", ".join(f"new.{column}" for column in COLUMNS)
    old = ", ".join(f"old.{column}" for column in COLUMNS)
    forget = (
        f"INSERT INTO search_members(search_members, rowid, {columns})"
        f" VALUES ('delete', old.id, {old});"
    )
    learn = f"INSERT INTO search_members(rowid, {columns}) VALUES (new.id, {new});"
    op.execute(f"CREATE TRIGGER search_members_insert AFTER INSERT ON members BEGIN {learn} END")
    op.execute(f"CREATE TRIGGER search_members_delete AFTER DELETE ON members BEGIN {forget} END")
    op.execute(
        f"CREATE TRIGGER search_members_update AFTER UPDATE OF {columns} ON members"
        f" BEGIN {forget} {learn} END"
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for column in COLUMNS:
            op.execute(f"DROP INDEX search_members_{column}")
        # pg_trgm stays: other things in the database may use it.
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER search_members_{trigger}")
        op.execute("DROP TABLE search_members")
    op.drop_index(op.f('ix_members_community_id_number_label'), table_name='members')
