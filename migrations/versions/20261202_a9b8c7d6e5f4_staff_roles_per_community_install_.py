"""staff roles per community, install owners, audit entries by community

Revision ID: a9b8c7d6e5f4
Revises: c7d6e5f4a3b2
Create Date: 2026-12-02 04:14:58.945755

An upgraded install keeps working: each staff account holds its old role in every
existing community, and the old owners also own the install. Audit entries of the tables
that name their community (and of payments, through their order) are filed under it.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "a9b8c7d6e5f4"
down_revision = "c7d6e5f4a3b2"
branch_labels = None
depends_on = None

#: Tables whose rows name their community, whose audit entries are filed under it.
_WITH_COMMUNITY = (
    "tiers",
    "groups",
    "members",
    "orders",
    "applications",
    "purges",
    "screening_questions",
    "perks",
    "coupons",
    "courses",
    "offers",
    "announcements",
    "api_tokens",
    "events",
    "webhook_endpoints",
)


def upgrade():
    op.create_table(
        "staff_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_user_id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["community_id"],
            ["communities.id"],
            name=op.f("fk_staff_roles_community_id_communities"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_user_id"],
            ["staff_users.id"],
            name=op.f("fk_staff_roles_staff_user_id_staff_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_roles")),
        sa.UniqueConstraint(
            "staff_user_id",
            "community_id",
            name=op.f("uq_staff_roles_staff_user_id_community_id"),
        ),
    )
    with op.batch_alter_table("staff_roles", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_staff_roles_community_id"), ["community_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_staff_roles_staff_user_id"), ["staff_user_id"], unique=False
        )

    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("community_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_audit_entries_community_id"), ["community_id"], unique=False
        )

    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("install_owner", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    # Each account keeps its role in every community; the owners also own the install.
    # The roles are read first and written after the column goes: on SQLite, dropping a
    # column rebuilds the table, and the rebuild's DROP would cascade to staff_roles.
    op.execute("UPDATE staff_users SET install_owner = (role = 'owner')")
    connection = op.get_bind()
    held = connection.execute(sa.text("SELECT id, role FROM staff_users")).all()
    communities = connection.execute(sa.text("SELECT id FROM communities")).scalars().all()
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.drop_column("role")
    now = datetime.now(UTC)
    if connection.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # stored as naive UTC there (see core.db.UTCDateTime)
    staff_roles = sa.table(
        "staff_roles",
        sa.column("staff_user_id", sa.Integer()),
        sa.column("community_id", sa.Integer()),
        sa.column("role", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        staff_roles,
        [
            {"staff_user_id": user_id, "community_id": community_id, "role": role, "created_at": now}
            for user_id, role in held
            for community_id in communities
        ],
    )
    for table in _WITH_COMMUNITY:
        op.execute(
            f"UPDATE audit_entries SET community_id = (SELECT {table}.community_id FROM {table} "
            f"WHERE {table}.id = audit_entries.target_id) WHERE target_type = '{table}'"
        )
    op.execute(
        "UPDATE audit_entries SET community_id = target_id WHERE target_type = 'communities'"
    )
    op.execute(
        "UPDATE audit_entries SET community_id = (SELECT orders.community_id FROM payments "
        "JOIN orders ON orders.id = payments.order_id WHERE payments.id = audit_entries.target_id)"
        " WHERE target_type = 'payments'"
    )



def downgrade():
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "role", sa.String(length=20), server_default="moderator", nullable=False
            )
        )
    # One role again: the install's owners are owners; the others keep the role they hold
    # in the community of the lowest id.
    op.execute(
        "UPDATE staff_users SET role = COALESCE((SELECT staff_roles.role FROM staff_roles "
        "WHERE staff_roles.staff_user_id = staff_users.id "
        "ORDER BY staff_roles.community_id LIMIT 1), 'moderator')"
    )
    op.execute("UPDATE staff_users SET role = 'owner' WHERE install_owner")
    with op.batch_alter_table("staff_users", schema=None) as batch_op:
        batch_op.drop_column("install_owner")

    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_entries_community_id"))
        batch_op.drop_column("community_id")

    with op.batch_alter_table("staff_roles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_staff_roles_staff_user_id"))
        batch_op.drop_index(batch_op.f("ix_staff_roles_community_id"))

    op.drop_table("staff_roles")
