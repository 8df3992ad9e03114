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
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from core.db import db
from core.exporters import Exporter
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
    """One row per ledger movement: payment, refund, dispute."""

    title = "流水 Movements"

    def __init__(self, query: LedgerQuery, totals: RevenueTotals | None = None) -> None:
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

    def rows(self) -> Iterator[list[object]]:
        zone = ZoneInfo(self.query.time_zone)
        select = self._select(
            LedgerEntry.created_at,
            LedgerEntry.kind,
            Order.public_id,
            *[column for _, column in self.query.details],
            Order.product,
            LedgerEntry.provider,
            LedgerEntry.provider_transaction_id,
            LedgerEntry.amount,
            LedgerEntry.currency,
            LedgerEntry.coupon_code,
            LedgerEntry.discount,
        ).order_by(LedgerEntry.id)
        # Plain rows through the session's connection: the ORM's row handling would cost a
        # quarter of the export, and nothing here needs objects.
        result = db.session.connection().execute(select.execution_options(yield_per=BATCH))
        for (
            created_at,
            kind,
            order_id,
            *details,
            product,
            provider,
            transaction,
            amount,
            currency,
            coupon,
            discount,
        ) in result:
            local = created_at.astimezone(zone).isoformat(" ", "seconds")[:19]
            # A fee entry is money the provider kept: no gross, all fee.
            gross = major(0 if kind == "fee" else amount, currency)
            fee = major(-amount if kind == "fee" else 0, currency)
            if self.totals is not None:
                self.totals.add(local, product, provider, currency, gross - fee)
            yield [
                local,
                kind,
                order_id,
                *details,
                product,
                provider,
                transaction or "",
                gross,
                fee,
                gross - fee,
                currency,
                coupon or "",
                major(discount, currency),
            ]


class RevenueTotals(Exporter):
    """Net totals (gross less fees) by day, and by month × product × provider, of the rows
    exported."""

    title = "汇总 Totals"
    headers = ("期间 Period", "产品 Product", "渠道 Provider", "币种 Currency", "净额 Net")

    def __init__(self) -> None:
        self._by_day: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self._by_month: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)

    def add(self, local: str, product: str, provider: str, currency: str, amount: Decimal):
        """Count a movement at ``local`` time (``YYYY-MM-DD HH:MM:SS``, community time)."""
        self._by_day[(local[:10], currency)] += amount
        self._by_month[(local[:7], product, provider, currency)] += amount

    def rows(self) -> Iterator[list[object]]:
        for (day, currency), amount in sorted(self._by_day.items()):
            yield [day, "", "", currency, amount]
        for (month, product, provider, currency), amount in sorted(self._by_month.items()):
            yield [month, product, provider, currency, amount]
