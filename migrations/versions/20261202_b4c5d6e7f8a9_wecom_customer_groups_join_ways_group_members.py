"""WeCom customer groups, join ways, group members

Groups may be WeCom customer groups (their chat id and owner); an invitation keeps its own
join way (config id, QR) and the WeCom user who joined with it, and when its own join link
(Telegram's) expires; the people WeCom lists in
each group are kept; platform tasks may be about a whole group (no invitation). Every new
column is nullable.

Revision ID: b4c5d6e7f8a9
Revises: e6f7a8b9c0d1
Create Date: 2026-12-02 01:40:57.841548

"""
import warnings
from contextlib import contextmanager

from alembic import op
import sqlalchemy as sa


@contextmanager
def _reflecting():
    """SQLite's batch mode rebuilds platform_tasks and invitations by reflecting them and
    the tables their keys reach (members, whose expression index SQLAlchemy cannot reflect
    and says so): that index is on no table rebuilt here, so the warning is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index", sa.exc.SAWarning
        )
        yield


# revision identifiers, used by Alembic.
revision = 'b4c5d6e7f8a9'
down_revision = 'e6f7a8b9c0d1'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('wecom_group_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('member_type', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=True),
    sa.Column('group_nickname', sa.String(length=80), nullable=True),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('join_scene', sa.Integer(), nullable=True),
    sa.Column('invitor', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=30), nullable=True),
    sa.Column('invitation_id', sa.Integer(), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('left_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_wecom_group_members_group_id_groups')),
    sa.ForeignKeyConstraint(['invitation_id'], ['invitations.id'], name=op.f('fk_wecom_group_members_invitation_id_invitations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wecom_group_members')),
    sa.UniqueConstraint('group_id', 'user_id', name=op.f('uq_wecom_group_members_group_id_user_id'))
    )
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wecom_chat_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('wecom_owner', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_groups_wecom_chat_id'), ['wecom_chat_id'])

    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('wecom_config_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('wecom_qr_url', sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column('wecom_user_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('join_link_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_invitations_wecom_user_id'), ['wecom_user_id'], unique=False)

    with _reflecting(), op.batch_alter_table('platform_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chat_id', sa.String(length=64), nullable=True))
        batch_op.alter_column('invitation_id',
               existing_type=sa.INTEGER(),
               nullable=True)



def downgrade():
    # Tasks about a whole group have no invitation: they cannot outlive the column's rule.
    op.execute("DELETE FROM platform_tasks WHERE invitation_id IS NULL")

    with _reflecting(), op.batch_alter_table('platform_tasks', schema=None) as batch_op:
        batch_op.alter_column('invitation_id',
               existing_type=sa.INTEGER(),
               nullable=False)
        batch_op.drop_column('chat_id')

    with _reflecting(), op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invitations_wecom_user_id'))
        batch_op.drop_column('join_link_expires_at')
        batch_op.drop_column('wecom_user_id')
        batch_op.drop_column('wecom_qr_url')
        batch_op.drop_column('wecom_config_id')

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_groups_wecom_chat_id'), type_='unique')
        batch_op.drop_column('wecom_owner')
        batch_op.drop_column('wecom_chat_id')

    op.drop_table('wecom_group_members')
