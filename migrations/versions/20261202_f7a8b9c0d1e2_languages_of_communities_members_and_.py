"""languages of communities, members and staff

Revision ID: f7a8b9c0d1e2
Revises: d5e6f7a8b9c0
Create Date: 2026-12-02 04:04:57.913912

"""
import warnings

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f7a8b9c0d1e2'
down_revision = 'd5e6f7a8b9c0'
branch_labels = None
depends_on = None

TABLES = ('communities', 'members', 'staff_users')


def upgrade():
    # Plain ADD COLUMN (SQLite has it): no batch rebuild of members, whose expression
    # index SQLAlchemy cannot reflect.
    for table in TABLES:
        op.add_column(table, sa.Column('locale', sa.String(length=10), nullable=True))
    # The communities there are spoke Chinese first: it stays their default.
    op.execute("UPDATE communities SET locale = 'zh_CN'")


def downgrade():
    # SQLite drops a column by rebuilding the table from its reflection, which cannot see
    # the expression index ix_members_listed: it is dropped first and made again after.
    op.drop_index('ix_members_listed', table_name='members')
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning
        )
        for table in reversed(TABLES):
            with op.batch_alter_table(table, schema=None) as batch_op:
                batch_op.drop_column('locale')
    op.create_index(
        'ix_members_listed', 'members',
        ['community_id', sa.text('coalesce(number, 2147483647)'), 'id'], unique=False,
    )
