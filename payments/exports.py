"""Finance exports: every ledger movement of a community in a date range (in the
community's time zone) — payments, refunds, disputes and the providers' fees — with its
product, coupon and discount, and net totals by day and by month × product (tier or
course) × provider.

Amounts are in major units (yuan) as exact decimals: the rows sum to the totals to the
fen. The ledger is read in batches, so a million movements export in flat memory.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from core.clock import local_timestamp_sql
from core.db import db
from core.exporters import Exporter, defused
from core.money import CURRENCIES
from payments.models import LedgerEntry, Order

BATCH = 5000


@functools.lru_cache(maxsize=4096)  # prices repeat: most movements are a few amounts
def major(amount: int, currency: str) -> Decimal:
    """Minor units as an exact decimal of major units: 9900 CNY → Decimal("99.00")."""
    exponent = CURRENCIES[currency][0]
    return Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """Which movements: those of one community's orders between two aware times."""

    community_id: int
    start: datetime
    end: datetime
    time_zone: str
    #: Extra columns describing the order: (label, SQL expression), e.g. member number.
    details: list[tuple[str, sa.ColumnElement]] = field(default_factory=list)
    #: Extra joins from ``orders`` for those columns.
    joins: Callable[[sa.Select], sa.Select] = lambda select: select


class RevenueRows(Exporter):
    """One row per ledger movement: payment, refund, dispute, fee."""

    title = "流水 Movements"
    defused_in_query = True

    def __init__(self, query: LedgerQuery, totals: RevenueTotals) -> None:
        self.query = query
        self.totals = totals
        self.headers = [
            "时间 Time",
            "类型 Kind",
            "订单号 Order",
            *[label for label, _ in query.details],
            "产品 Product",
            "渠道 Provider",
            "渠道流水号 Provider transaction",
            "金额 Gross",
            "手续费 Fee",
            "净额 Net",
            "币种 Currency",
            "优惠码 Coupon",
            "优惠 Discount",
        ]

    def _select(self, *columns) -> sa.Select:
        return self.query.joins(
            sa.select(*columns).join(Order, Order.id == LedgerEntry.order_id)
        ).where(
            Order.community_id == self.query.community_id,
            LedgerEntry.created_at >= self.query.start,
            LedgerEntry.created_at < self.query.end,
        )

    def count(self) -> int:
        """How many movements the export has (for a progress bar)."""
        return db.session.scalar(self._select(sa.func.count(LedgerEntry.id)))

    def rows(self) -> Iterator[tuple[object, ...]]:
        query = self.query
        select = self._select(
            local_timestamp_sql(LedgerEntry.created_at, query.time_zone, query.start, query.end),
            LedgerEntry.kind,
            defused(Order.public_id),
            *[defused(column) for _, column in query.details],
            defused(Order.product),
            LedgerEntry.provider,
            defused(LedgerEntry.provider_transaction_id),
            LedgerEntry.amount,
            LedgerEntry.currency,
            defused(LedgerEntry.coupon_code),
            LedgerEntry.discount,
        ).order_by(LedgerEntry.id)
        # Plain rows through the session's connection, times formatted by the database:
        # the ORM's row handling and Python's time zones would cost more than the rest.
        result = db.session.connection().execute(select.execution_options(yield_per=BATCH))
        # Net sums by day × product × provider × currency: the totals are made of them.
        sums = self.totals.sums
        for rows in result.partitions():
            for row in rows:
                *described, product, provider, transaction, amount, currency, coupon, discount = row
                cells, net = _amounts(described[1], amount, currency, discount)
                sums[(described[0][:10], product, provider, currency)] += net
                yield (*described, product, provider, transaction, *cells[:4], coupon, cells[4])


@functools.lru_cache(maxsize=4096)
def _amounts(
    kind: str, amount: int, currency: str, discount: int
) -> tuple[tuple[Decimal, Decimal, Decimal, str, Decimal], int]:
    """A movement's gross, fee, net, currency and discount cells, and its net in minor
    units. A fee entry is money the provider kept: no gross, all fee."""
    gross, fee = (0, -amount) if kind == "fee" else (amount, 0)
    cells = (
        major(gross, currency),
        major(fee, currency),
        major(amount, currency),
        currency,
        major(discount, currency),
    )
    return cells, amount


class RevenueTotals(Exporter):
    """Net totals (gross less fees) by day, and by month × product × provider, of the rows
    exported."""

    title = "汇总 Totals"
    headers = ("期间 Period", "产品 Product", "渠道 Provider", "币种 Currency", "净额 Net")

    def __init__(self) -> None:
        #: Net amounts (minor units) by (day, product, provider, currency), as read.
        self.sums: dict[tuple[str, str, str, str], int] = defaultdict(int)

    def rows(self) -> Iterator[list[object]]:
        by_day: dict[tuple[str, str], int] = defaultdict(int)
        by_month: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for (day, product, provider, currency), amount in self.sums.items():
            by_day[(day, currency)] += amount
            by_month[(day[:7], product, provider, currency)] += amount
        for (day, currency), amount in sorted(by_day.items()):
            yield [day, "", "", currency, major(amount, currency)]
        for (month, product, provider, currency), amount in sorted(by_month.items()):
            yield [month, product, provider, currency, major(amount, currency)]
