"""payments made with their community's own account

Each payment remembers whether it was made with its community's own account at the
provider or with the install's, so that a community taking its own account while payments
are waiting keeps those on the keys that made them. Payments made before this revision
are taken to be on the community's own account when it has one now (the way they were
verified until now).

Revision ID: e3f4a5b6c7d8
Revises: d2e3f4a5b6c7
Create Date: 2026-12-02 08:02:52.150512

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e3f4a5b6c7d8'
down_revision = 'd2e3f4a5b6c7'
branch_labels = None
depends_on = None


def upgrade():
    # A plain ADD COLUMN on both databases (no table rebuild on SQLite).
    op.add_column(
        'payments',
        sa.Column('own_account', sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.execute(
        """
        UPDATE payments SET own_account = TRUE
        WHERE EXISTS (
            SELECT 1 FROM orders JOIN payment_accounts
              ON payment_accounts.community_id = orders.community_id
            WHERE orders.id = payments.order_id
              AND payment_accounts.provider = payments.provider
        )
        """
    )


def downgrade():
    # A plain DROP COLUMN on both databases (SQLite 3.35+): a batch rebuild of payments
    # would drop the table that refunds and ledger entries point at.
    op.execute("ALTER TABLE payments DROP COLUMN own_account")
