"""outbox as a queue: kinds, routes, params, retries

Revision ID: f0e1d2c3b4a5
Revises: c0ffee123456
Create Date: 2026-12-01 23:54:48.737449

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f0e1d2c3b4a5'
down_revision = 'c0ffee123456'
branch_labels = None
depends_on = None


#: How the old one-channel messages are reached now (a WeChat ID could never be sent to).
OLD_CHANNELS = {"phone": "sms", "email": "email", "wechat_template": "wechat"}


def _outbox():
    return sa.table(
        "outbox_messages",
        sa.column("id", sa.Integer),
        sa.column("channel", sa.String),
        sa.column("recipient", sa.String),
        sa.column("routes", sa.JSON),
        sa.column("params", sa.JSON),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("next_attempt_at", sa.DateTime(timezone=True)),
    )


def upgrade():
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.Enum("login_code", "pay_link", "reminder", "announcement", "notice", name="messagekind", native_enum=False, length=20), nullable=False, server_default="notice"))
        batch_op.add_column(sa.Column("routes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("secret", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("member_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("dedupe_key", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("channel", existing_type=sa.VARCHAR(length=16), nullable=True)
        batch_op.alter_column("recipient", existing_type=sa.VARCHAR(length=254), nullable=True)
        batch_op.drop_index(batch_op.f("ix_outbox_messages_status_id"))
        batch_op.create_index(batch_op.f("ix_outbox_messages_status_next_attempt_at"), ["status", "next_attempt_at"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_outbox_messages_dedupe_key"), ["dedupe_key"])

    outbox = _outbox()
    connection = op.get_bind()
    for id_, channel, recipient, created_at in connection.execute(
        sa.select(outbox.c.id, outbox.c.channel, outbox.c.recipient, outbox.c.created_at)
    ).all():
        routes = [[OLD_CHANNELS[channel], recipient]] if channel in OLD_CHANNELS else []
        connection.execute(
            outbox.update()
            .where(outbox.c.id == id_)
            .values(routes=routes, params={}, next_attempt_at=created_at)
        )

    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.alter_column("routes", existing_type=sa.JSON(), nullable=False)
        batch_op.alter_column("params", existing_type=sa.JSON(), nullable=False)
        batch_op.alter_column("next_attempt_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column("kind", existing_type=sa.String(length=20), server_default=None)
        batch_op.alter_column("secret", existing_type=sa.Boolean(), server_default=None)


def downgrade():
    outbox = _outbox()
    connection = op.get_bind()
    back = {new: old for old, new in OLD_CHANNELS.items()}
    for id_, channel, recipient, routes in connection.execute(
        sa.select(outbox.c.id, outbox.c.channel, outbox.c.recipient, outbox.c.routes)
    ).all():
        if channel is None:
            channel, recipient = routes[0] if routes else ("wechat", "")
        connection.execute(
            outbox.update()
            .where(outbox.c.id == id_)
            .values(channel=back.get(channel, channel), recipient=recipient)
        )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_outbox_messages_dedupe_key"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_outbox_messages_status_next_attempt_at"))
        batch_op.create_index(batch_op.f("ix_outbox_messages_status_id"), ["status", "id"], unique=False)
        batch_op.alter_column("recipient", existing_type=sa.VARCHAR(length=254), nullable=False)
        batch_op.alter_column("channel", existing_type=sa.VARCHAR(length=16), nullable=False)
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("dedupe_key")
        batch_op.drop_column("member_id")
        batch_op.drop_column("secret")
        batch_op.drop_column("params")
        batch_op.drop_column("routes")
        batch_op.drop_column("kind")
