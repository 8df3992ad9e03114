"""renewal days of applications

A paid renewal remembers the days it added to its membership, so that a refund or a
chargeback of it takes those days back (and a won dispute gives them again). Renewals
paid before this revision are given their tier's days now, except those put before the
admins instead of extending (bought twice, paid after the end): those added none.

Revision ID: a1b2c3d4e5f7
Revises: e3f4a5b6c7d8
Create Date: 2026-12-03 09:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a1b2c3d4e5f7'
down_revision = 'e3f4a5b6c7d8'
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN on both databases (no table rebuild on SQLite).
    op.add_column('applications', sa.Column('renewal_days', sa.Integer(), nullable=True))
    op.execute(
        """
        UPDATE applications SET renewal_days = (
            SELECT NULLIF(tiers.duration_days, 0) FROM tiers WHERE tiers.id = applications.tier_id
        )
        WHERE renews_membership_id IS NOT NULL AND status = 'admitted'
          AND NOT EXISTS (
            SELECT 1 FROM order_flags
            WHERE order_flags.order_id = applications.order_id
              AND order_flags.kind IN ('bought_twice', 'paid_after_end')
          )
        """
    )


def downgrade():
    # A plain DROP COLUMN on both databases (SQLite 3.35+).
    op.execute("ALTER TABLE applications DROP COLUMN renewal_days")
