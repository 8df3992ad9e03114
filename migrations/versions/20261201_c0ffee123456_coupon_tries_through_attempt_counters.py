"""coupon tries through attempt counters

Coupon codes are limited by claims on ``attempt_counters`` (core.limits) taken before the
check; the refusals counted after it go.

Revision ID: c0ffee123456
Revises: a1b2c3d4e5f6
Create Date: 2026-12-01 23:08:20.927946

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c0ffee123456'
down_revision = 'a1b2c3d4e5f6'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('refused_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refused_codes_client_created_at'))

    op.drop_table('refused_codes')


def downgrade():
    # The table as 952ca6299f5b made it (empty: the counters are not turned back into it).
    op.create_table('refused_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refused_codes'))
    )
    with op.batch_alter_table('refused_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refused_codes_client_created_at'), ['client', 'created_at'], unique=False)
