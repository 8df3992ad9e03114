"""coupon codes of applications

A prospect's coupon code waits on the application until its channel is proven; only then
is it applied to the order and its use reserved.

Revision ID: b2c3d4e5f6a8
Revises: a1b2c3d4e5f7
Create Date: 2026-12-03 16:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b2c3d4e5f6a8'
down_revision = 'a1b2c3d4e5f7'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('applications', sa.Column('coupon_code', sa.String(length=40), nullable=True))


def downgrade():
    # A plain DROP COLUMN on both databases (SQLite 3.35+).
    op.execute("ALTER TABLE applications DROP COLUMN coupon_code")
