"""Finance exports: every ledger movement of a community in a date range (in the
community's time zone) — payments, refunds, disputes and the providers' fees — with its
product, coupon and discount, and net totals by day and by month × product (tier or
course) × provider.

Amounts are in major units (yuan) as exact decimals: the rows sum to the totals to the
fen. The movements are read in batches, or written as CSV by the database itself, so a
million of them export in flat memory; the totals are summed by the database.
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
from core.db import db, is_postgresql, read_parts
from core.exporters import Exporter, defused
from core.money import CURRENCIES
from payments.models import LedgerEntry, Order

BATCH = 5000
#: Ledger ids per part of an export that SQLite writes (:meth:`RevenueRows.text_parts`).
PART_IDS = 20_000


@functools.lru_cache(maxsize=4096)  # prices repeat: most movements are a few amounts
def major(amount: int, currency: str) -> Decimal:
    """Minor units as an exact decimal of major units: 9900 CNY → Decimal("99.00")."""
    exponent = CURRENCIES[currency]
    return Decimal(amount).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


def major_sql(amount: sa.ColumnElement[int], currency: sa.ColumnElement[str]) -> sa.ColumnElement:
    """SQL for :func:`major`, shown as :func:`major`'s text: PostgreSQL's numeric keeps the
    scale (9900 × 0.01 is 99.00); SQLite, which would give a float, prints the integer's
    digits either side of the point."""
    if is_postgresql():
        units = {code: Decimal(1).scaleb(-exponent) for code, exponent in CURRENCIES.items()}
        unit = sa.case({code: sa.literal(value) for code, value in units.items()}, value=currency)
        return sa.cast(amount, sa.Numeric) * unit
    size = sa.func.abs(amount)
    sign = sa.case((amount < 0, "-"), else_="")
    texts = {}
    for code, exponent in CURRENCIES.items():
        scale = 10**exponent  # SQLite's / of integers is integer division
        texts[code] = (
            sa.func.printf(f"%s%d.%0{exponent}d", sign, size.op("/")(scale), size % scale)
            if exponent
            else amount
        )
    return sa.case(texts, value=currency)


@dataclass(frozen=True)
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

    def select(self, *columns, ids: range | None = None) -> sa.Select:
        """``columns`` of these movements, joined with their orders (:attr:`joins` adds the
        details' tables); only those whose ledger ids are in ``ids`` if given."""
        select = (
            sa.select(*columns)
            .join(Order, Order.id == LedgerEntry.order_id)
            .where(LedgerEntry.created_at >= self.start, LedgerEntry.created_at < self.end)
        )
        if ids is None:
            return select.where(Order.community_id == self.community_id)
        # The community as an expression, not the bare column: the id range, not the
        # community's index, is what the database should start from.
        return select.where(
            LedgerEntry.id >= ids.start,
            LedgerEntry.id < ids.stop,
            Order.community_id + 0 == self.community_id,
        )

    @functools.cached_property
    def id_ranges(self) -> list[range]:
        """The movements' ledger ids in ranges of :data:`PART_IDS`, for reading in parts."""
        first, last = db.session.execute(
            sa.select(sa.func.min(LedgerEntry.id), sa.func.max(LedgerEntry.id)).where(
                LedgerEntry.created_at >= self.start, LedgerEntry.created_at < self.end
            )
        ).one()
        if first is None:
            return []
        return [range(start, start + PART_IDS) for start in range(first, last + 1, PART_IDS)]

    def local_time(self) -> sa.ColumnElement[str]:
        """A movement's time on the community's clock, ``YYYY-MM-DD HH:MM:SS``."""
        return local_timestamp_sql(LedgerEntry.created_at, self.time_zone, self.start, self.end)


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

    def count(self) -> int:
        """How many movements the export has (for a progress bar)."""
        return self.totals.movements

    def _select(self, *columns, ids: range | None = None) -> sa.Select:
        """``columns`` of the movements with their details, in the ledger's order."""
        select = self.query.select(*columns, ids=ids)
        return self.query.joins(select).order_by(LedgerEntry.id)

    def _described(self) -> list[sa.ColumnElement]:
        """The text columns before the amounts, formula injection defused."""
        return [
            self.query.local_time(),
            LedgerEntry.kind,
            defused(Order.public_id),
            *[defused(column) for _, column in self.query.details],
            defused(Order.product),
            LedgerEntry.provider,
            defused(LedgerEntry.provider_transaction_id),
        ]

    def rows(self) -> Iterator[tuple[object, ...]]:
        select = self._select(
            *self._described(),
            LedgerEntry.amount,
            LedgerEntry.currency,
            defused(LedgerEntry.coupon_code),
            LedgerEntry.discount,
        )
        # Plain rows through the session's connection, times formatted by the database:
        # the ORM's row handling and Python's time zones would cost more than the rest.
        result = db.session.connection().execute(select.execution_options(yield_per=BATCH))
        for rows in result.partitions():
            for *described, amount, currency, coupon, discount in rows:
                gross, fee, net, discounted = _amounts(described[1], amount, currency, discount)
                yield (*described, gross, fee, net, currency, coupon, discounted)

    def text_query(self, ids: range | None = None) -> sa.Select:
        """The rows as text, as :meth:`rows` gives them, for the database to write; those
        of the ledger ids in ``ids`` if given."""
        gross = sa.case((LedgerEntry.kind == "fee", 0), else_=LedgerEntry.amount)
        fee = sa.case((LedgerEntry.kind == "fee", -LedgerEntry.amount), else_=0)
        currency = LedgerEntry.currency
        return self._select(
            *self._described(),
            major_sql(gross, currency),
            major_sql(fee, currency),
            major_sql(LedgerEntry.amount, currency),
            currency,
            defused(LedgerEntry.coupon_code),
            major_sql(LedgerEntry.discount, currency),
            ids=ids,
        )

    def text_parts(self) -> Iterator[sa.Select]:
        """The text query by ranges of :data:`PART_IDS` ledger ids."""
        for ids in self.query.id_ranges:
            yield self.text_query(ids)


@functools.lru_cache(maxsize=4096)
def _amounts(
    kind: str, amount: int, currency: str, discount: int
) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """A movement's gross, fee, net and discount. A fee entry is money the provider kept:
    no gross, all fee."""
    gross, fee = (0, -amount) if kind == "fee" else (amount, 0)
    return (
        major(gross, currency),
        major(fee, currency),
        major(amount, currency),
        major(discount, currency),
    )


class RevenueTotals(Exporter):
    """Net totals (gross less fees) by day, and by month × product × provider, of the
    movements the rows list."""

    title = "汇总 Totals"
    headers = ("期间 Period", "产品 Product", "渠道 Provider", "币种 Currency", "净额 Net")

    def __init__(self, query: LedgerQuery, *, jobs: int = 1) -> None:
        self.query = query
        self.jobs = jobs

    @functools.cached_property
    def _sums(self) -> list[tuple]:
        """Net amount (minor units) and count of movements by day × product × provider ×
        currency, summed by the database; with ``jobs`` > 1 by parts of the ledger side by
        side (see :func:`core.db.read_parts`), so a key may come once per part: every use
        adds them up."""
        day = sa.func.substr(self.query.local_time(), 1, 10).label("day")
        keys = (day, Order.product, LedgerEntry.provider, LedgerEntry.currency)
        sums = (sa.func.sum(LedgerEntry.amount), sa.func.count(LedgerEntry.id))
        if self.jobs == 1 or is_postgresql():
            select = self.query.select(*keys, *sums).group_by("day", *keys[1:])
            return db.session.execute(select).all()
        parts = [
            self.query.select(*keys, *sums, ids=ids).group_by("day", *keys[1:])
            for ids in self.query.id_ranges
        ]
        return [row for rows in read_parts(parts, jobs=self.jobs) for row in rows]

    @property
    def movements(self) -> int:
        """How many movements the totals add up."""
        return sum(count for *_, count in self._sums)

    def by_day(self) -> dict[tuple[str, str], int]:
        """Net minor units by (day, currency)."""
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for day, _, _, currency, amount, _ in self._sums:
            sums[(day, currency)] += amount
        return sums

    def rows(self) -> Iterator[list[object]]:
        by_month: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for day, product, provider, currency, amount, _ in self._sums:
            by_month[(day[:7], product, provider, currency)] += amount
        for (day, currency), amount in sorted(self.by_day().items()):
            yield [day, "", "", currency, major(amount, currency)]
        for (month, product, provider, currency), amount in sorted(by_month.items()):
            yield [month, product, provider, currency, major(amount, currency)]
