"""daily figures of communities

Each community's figures by day of its calendar (revenue per currency, members joined and
ended, the join funnel, the change in paying members), kept by session hooks from now on
(``membership.figures``) and filled here from the rows that exist, each day in its
community's time zone. An index on memberships by status and end serves the current
memberships past their end (not yet swept) and the renewals due.

The fill is written out here rather than imported, so that it stays what it was when the
table was made; it agrees with ``membership.figures.recomputed`` (``flask check``).

Revision ID: c1d2e3f4a5b6
Revises: b8c7d6e5f4a3
Create Date: 2026-12-02 06:40:56.906981

"""
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c1d2e3f4a5b6'
down_revision = 'b8c7d6e5f4a3'
branch_labels = None
depends_on = None


def _local_day_sqlite(moment, zone):
    if moment is None:
        return None
    utc = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    return utc.astimezone(ZoneInfo(zone)).date().isoformat()


#: Every source row as (community, local day, currency, revenue, joined, ended,
#: applications, orders, paid, paying); DAY(x) is x's day in the community's zone.
_SOURCES = """
SELECT o.community_id AS community_id, DAY(l.created_at) AS day, l.currency AS currency,
       l.amount AS revenue, 0 AS joined, 0 AS ended, 0 AS applications, 0 AS orders,
       0 AS paid, 0 AS paying
FROM ledger_entries l JOIN orders o ON o.id = l.order_id
JOIN communities c ON c.id = o.community_id
UNION ALL
SELECT t.community_id, DAY(m.starts_at), '', 0, 1, 0, 0, 0, 0, 0
FROM memberships m JOIN tiers t ON t.id = m.tier_id AND t.kind = 'paid'
JOIN communities c ON c.id = t.community_id
UNION ALL
SELECT e.community_id, DAY(e.created_at), '', 0, 0, 1, 0, 0, 0, 0
FROM events e JOIN communities c ON c.id = e.community_id
WHERE e.type = 'membership.ended' AND STATUS(e.data) != 'suspended'
UNION ALL
SELECT a.community_id, DAY(a.created_at), '', 0, 0, 0, 1,
       CASE WHEN a.order_id IS NULL THEN 0 ELSE 1 END,
       CASE WHEN o.paid_at IS NULL THEN 0 ELSE 1 END, 0
FROM applications a JOIN communities c ON c.id = a.community_id
LEFT JOIN orders o ON o.id = a.order_id
UNION ALL
SELECT f.community_id, DAY(f.since), '', 0, 0, 0, 0, 0, 0, 1
FROM (
    SELECT t.community_id AS community_id, min(m.starts_at) AS since
    FROM memberships m JOIN tiers t ON t.id = m.tier_id AND t.kind = 'paid'
    WHERE m.status IN ('active', 'suspended')
    GROUP BY t.community_id, m.member_id
) f JOIN communities c ON c.id = f.community_id
"""

_FILL = """
INSERT INTO daily_figures
    (community_id, day, currency, slot, revenue, joined, ended, applications, orders, paid,
     paying)
SELECT community_id, day, currency, 0, sum(revenue), sum(joined), sum(ended),
       sum(applications), sum(orders), sum(paid), sum(paying)
FROM ({sources}) s
GROUP BY community_id, day, currency
"""


def _fill():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        sources = _SOURCES.replace("STATUS(e.data)", "(e.data ->> 'status')")
    else:
        bind.connection.driver_connection.create_function(
            "figures_local_day", 2, _local_day_sqlite, deterministic=True
        )
        sources = _SOURCES.replace("STATUS(e.data)", "json_extract(e.data, '$.status')")
    op.execute(_FILL.format(sources=_days(sources, bind.dialect.name)))


def _days(sql, dialect):
    """DAY(x) written out for ``dialect``."""
    out, rest = [], sql
    while "DAY(" in rest:
        before, rest = rest.split("DAY(", 1)
        column, rest = rest.split(")", 1)
        if dialect == "postgresql":
            out.append(f"{before}CAST(timezone(c.time_zone, {column}) AS date)")
        else:
            out.append(f"{before}figures_local_day({column}, c.time_zone)")
    return "".join(out) + rest


def upgrade():
    op.create_table('daily_figures',
    sa.Column('community_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('slot', sa.SmallInteger(), nullable=False),
    sa.Column('revenue', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('joined', sa.Integer(), server_default='0', nullable=False),
    sa.Column('ended', sa.Integer(), server_default='0', nullable=False),
    sa.Column('applications', sa.Integer(), server_default='0', nullable=False),
    sa.Column('orders', sa.Integer(), server_default='0', nullable=False),
    sa.Column('paid', sa.Integer(), server_default='0', nullable=False),
    sa.Column('paying', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['community_id'], ['communities.id'], name=op.f('fk_daily_figures_community_id_communities')),
    sa.PrimaryKeyConstraint('community_id', 'day', 'currency', 'slot', name=op.f('pk_daily_figures'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_status_ends_at'), ['status', 'ends_at'], unique=False)
    _fill()


def downgrade():
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_status_ends_at'))

    op.drop_table('daily_figures')
