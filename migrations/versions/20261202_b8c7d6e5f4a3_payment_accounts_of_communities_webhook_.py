"""payment accounts of communities, webhook community

A community's own account at a provider (plain settings, sealed secrets, hints); each
webhook delivery remembers the community whose URL it came to (NULL: the install's).

Revision ID: b8c7d6e5f4a3
Revises: a9b8c7d6e5f4
Create Date: 2026-12-02 04:15:38.028265

"""
import warnings
from contextlib import contextmanager

from alembic import op
import sqlalchemy as sa


@contextmanager
def _reflecting():
    """SQLite's batch mode rebuilds webhook_events by reflecting it and the tables its
    keys reach (members, through payments and orders, whose expression index SQLAlchemy
    cannot reflect and says so): that index is on no table rebuilt here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning
        )
        yield


# revision identifiers, used by Alembic.
revision = 'b8c7d6e5f4a3'
down_revision = 'a9b8c7d6e5f4'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('payment_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('community_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('sealed', sa.JSON(), nullable=False),
    sa.Column('hints', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['community_id'], ['communities.id'], name=op.f('fk_payment_accounts_community_id_communities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_accounts')),
    sa.UniqueConstraint('community_id', 'provider', name=op.f('uq_payment_accounts_community_id_provider'))
    )
    # Deliveries received so far came to the install-wide URLs: NULL, the install's keys.
    with _reflecting(), op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('community_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_webhook_events_community_id_communities'), 'communities', ['community_id'], ['id'])


def downgrade():
    with _reflecting(), op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_webhook_events_community_id_communities'), type_='foreignkey')
        batch_op.drop_column('community_id')

    op.drop_table('payment_accounts')
