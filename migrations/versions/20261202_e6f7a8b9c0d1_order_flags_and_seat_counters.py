"""order flags and seat counters

Orders that need an admin's attention: paid twice, bought twice, a second transaction
for a confirmed payment, a renewal of an ended membership, a coupon paid for after it
went to someone else. Each group's live invitations kept as a counter (filled from the
invitations here), so finding a free seat no longer counts them. Indexes for lists and
dashboards at scale: members in list order, invitations and webhook deliveries by status.

Revision ID: e6f7a8b9c0d1
Revises: d1e2f3a4b5c6
Create Date: 2026-12-02 01:39:42.534947

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e6f7a8b9c0d1'
down_revision = 'd1e2f3a4b5c6'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('order_flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('payment_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.Enum('paid_twice', 'bought_twice', 'paid_after_end', 'second_transaction', 'coupon_over_limit', name='flagkind', native_enum=False, length=20), nullable=False),
    sa.Column('detail', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_flags_order_id_orders')),
    sa.ForeignKeyConstraint(['payment_id'], ['payments.id'], name=op.f('fk_order_flags_payment_id_payments')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_flags'))
    )
    with op.batch_alter_table('order_flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_flags_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_order_flags_resolved_at'), ['resolved_at'], unique=False)

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seats_taken', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_check_constraint(op.f('ck_groups_seats_taken_not_negative'), 'seats_taken >= 0')
    op.create_index(
        'ix_members_listed', 'members',
        ['community_id', sa.text('coalesce(number, 2147483647)'), 'id'], unique=False,
    )
    op.create_index(op.f('ix_invitations_status'), 'invitations', ['status'], unique=False)
    op.create_index(op.f('ix_webhook_events_status'), 'webhook_events', ['status'], unique=False)
    op.execute(
        "UPDATE groups SET seats_taken = (SELECT count(*) FROM invitations"
        " WHERE invitations.group_id = groups.id AND invitations.status IN ('issued', 'joined'))"
    )



def downgrade():
    op.drop_index(op.f('ix_webhook_events_status'), table_name='webhook_events')
    op.drop_index(op.f('ix_invitations_status'), table_name='invitations')
    op.drop_index('ix_members_listed', table_name='members')
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_groups_seats_taken_not_negative'), type_='check')
        batch_op.drop_column('seats_taken')
    with op.batch_alter_table('order_flags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_flags_resolved_at'))
        batch_op.drop_index(batch_op.f('ix_order_flags_order_id'))

    op.drop_table('order_flags')
