"""Finance exports: every ledger movement of a community in a date range (in the
community's time zone) — payments, refunds, disputes and the providers' fees — with its
product, coupon and discount, split into gross, fees, refunds and net; grand totals per
currency; and net totals by day and by month × product (tier or course) × provider.
Column names and labels are in the language of the request (or of a ``force_locale``
block): catalogs, read when the export is written.

Amounts are in major units (yuan) as exact decimals: the rows sum to the totals to the
fen. The movements are read in batches, or written as CSV by the database itself, so a
million of them export in flat memory; the totals are summed by the database.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l

from core.clock import local_timestamp_sql, utc_offsets
from core.db import db, is_postgresql, part_value, read_parts
from core.exporters import ColumnTotal, Exporter, Printed, csv_line_sql, defused
from core.money import CURRENCIES
from payments.models import LedgerEntry, Order

BATCH = 5000
#: What each kind of ledger movement is called in an export.
KIND_LABELS = {
    "payment": _l("Payment"),
    "refund": _l("Refund"),
    "dispute": _l("Chargeback"),
    "dispute_won": _l("Chargeback won"),
    "fee": _l("Provider fee"),
}
#: Ledger ids per part of an export that SQLite writes (:attr:`LedgerQuery.parts`).
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
    # A test per number of decimals (three), not per currency (138, each row trying them
    # in turn up to its own: CNY was the 26th, five amounts a row; on PostgreSQL that was
    # two thirds of the movements' query); the most common first.
    branches = []
    for exponent, codes in _CODES_BY_EXPONENT:
        if is_postgresql():
            text = sa.cast(amount, sa.Numeric) * sa.literal(Decimal(1).scaleb(-exponent))
        else:
            printed = printed_major(amount, exponent)
            text = sa.func.printf(printed.format, *printed.values)
        branches.append((currency.in_(codes), text))
    return sa.case(*branches)


def printed_major(amount: sa.ColumnElement[int], exponent: int) -> Printed:
    """SQLite's printf of :func:`major`'s text for a currency with ``exponent`` decimals:
    the integer's digits either side of the point (SQLite's / of integers is integer
    division, and would give a float of anything else)."""
    if not exponent:
        return Printed("%d", (amount,))
    scale = 10**exponent
    size = sa.func.abs(amount)
    sign = sa.case((amount < 0, "-"), else_="")
    return Printed(f"%s%d.%0{exponent}d", (sign, size.op("/")(scale), size % scale))


def _codes_by_exponent() -> list[tuple[int, list[str]]]:
    """The currency codes by their number of decimals, the largest group first."""
    codes: dict[int, list[str]] = defaultdict(list)
    for code, exponent in CURRENCIES.items():
        codes[exponent].append(code)
    return sorted(codes.items(), key=lambda group: -len(group[1]))


_CODES_BY_EXPONENT = _codes_by_exponent()


@dataclass(frozen=True)
class LedgerQuery:
    """Which movements: those of one community's orders between two aware times."""

    community_id: int
    start: datetime
    end: datetime
    time_zone: str
    #: Extra columns describing the order: (label, SQL expression), e.g. member number;
    #: labels may be lazy strings, read when the export is written.
    details: list[tuple[str, sa.ColumnElement]] = field(default_factory=list)
    #: Extra joins from ``orders`` for those columns.
    joins: Callable[[sa.Select], sa.Select] = lambda select: select

    def select(self, *columns, parted: bool = False) -> sa.Select:
        """``columns`` of these movements, joined with their orders (:attr:`joins` adds the
        details' tables); if ``parted``, only those of a part's ledger ids (a query for
        :func:`core.db.read_parts` with :attr:`parts`)."""
        select = (
            sa.select(*columns)
            .join(Order, Order.id == LedgerEntry.order_id)
            .where(LedgerEntry.created_at >= self.start, LedgerEntry.created_at < self.end)
        )
        if not parted:
            return select.where(Order.community_id == self.community_id)
        # The community as an expression, not the bare column: the id range, not the
        # community's index, is what the database should start from.
        return select.where(
            LedgerEntry.id >= part_value("first"),
            LedgerEntry.id < part_value("stop"),
            Order.community_id + 0 == self.community_id,
        )

    @functools.cached_property
    def parts(self) -> list[dict[str, object]]:
        """The movements' ledger ids in ranges of :data:`PART_IDS` (first and stop), for
        reading in parts."""
        first, last = db.session.execute(
            sa.select(sa.func.min(LedgerEntry.id), sa.func.max(LedgerEntry.id)).where(
                LedgerEntry.created_at >= self.start, LedgerEntry.created_at < self.end
            )
        ).one()
        if first is None:
            return []
        return [
            {"first": start, "stop": start + PART_IDS} for start in range(first, last + 1, PART_IDS)
        ]

    def local_time(self) -> sa.ColumnElement[str]:
        """A movement's time on the community's clock, ``YYYY-MM-DD HH:MM:SS``."""
        return local_timestamp_sql(LedgerEntry.created_at, self.time_zone, self.start, self.end)

    def day_group(self) -> tuple[sa.ColumnElement, Callable[[Any], str]]:
        """What to group the movements by for sums by day, and the community's day
        (``YYYY-MM-DD``) of a group's value. PostgreSQL: the local date (as a date: to_char
        was a third of the totals' query). SQLite, when the zone's offsets and the moments
        they change are whole hours from :attr:`start` to :attr:`end`: the hour on UTC's
        clock, a prefix of the stored text (the local time, a date-time computed per row,
        was a quarter of the totals' cost); otherwise the local day itself."""
        if is_postgresql():
            local = sa.func.timezone(self.time_zone, LedgerEntry.created_at)
            return sa.cast(local, sa.Date), date.isoformat
        spans = utc_offsets(self.time_zone, self.start, self.end)
        whole_hours = all(offset % 3600 == 0 for _, offset in spans) and all(
            until.minute == until.second == until.microsecond == 0 for until, _ in spans[:-1]
        )
        if not whole_hours:
            return sa.func.substr(self.local_time(), 1, 10), str

        @functools.cache
        def day(hour: str) -> str:
            moment = datetime.fromisoformat(f"{hour}:00+00:00")
            offset = next(offset for until, offset in spans if moment < until)
            return (moment + timedelta(seconds=offset)).date().isoformat()

        return sa.func.substr(LedgerEntry.created_at, 1, 13), day


def kind_label_sql() -> sa.ColumnElement[str]:
    """SQL for a movement's kind as :data:`KIND_LABELS` names it in the current language."""
    labels = {kind: str(label) for kind, label in KIND_LABELS.items()}
    return sa.case(labels, value=LedgerEntry.kind, else_=LedgerEntry.kind)


class RevenueRows(Exporter):
    """One row per ledger movement: payment, refund, dispute, fee; the movement's time as
    a date-time on the community's clock (a real date-time cell in a workbook), and a
    total row per currency under the rows of a workbook."""

    title = _l("Movements")
    #: Where the amounts are, for the totals under them.
    AMOUNTS = ("gross", "fee", "refunds", "net")

    def __init__(self, query: LedgerQuery, totals: RevenueTotals) -> None:
        self.query = query
        self.totals = totals
        self.headers = [
            _l("Time"),
            _l("Kind"),
            _l("Order"),
            *[label for label, _ in query.details],
            _l("Product"),
            _l("Provider"),
            _l("Provider transaction"),
            _l("Gross"),
            _l("Fee"),
            _l("Refunds"),
            _l("Net"),
            _l("Currency"),
            _l("Coupon"),
            _l("Discount"),
        ]
        details = len(query.details)
        self.widths = [19, 14, 26, *[12] * details, 24, 10, 30, 12, 12, 12, 12, 8, 14, 12]
        self.gross_column = 6 + details
        self.currency_column = self.gross_column + 4

    def count(self) -> int:
        """How many movements the export has (for a progress bar)."""
        return self.totals.movements

    def _select(self, *columns, parted: bool = False) -> sa.Select:
        """``columns`` of the movements with their details, in the ledger's order."""
        select = self.query.select(*columns, parted=parted)
        return self.query.joins(select).order_by(LedgerEntry.id)

    def _described(self, safe: Callable = defused) -> list[sa.ColumnElement]:
        """The text columns before the amounts, each through ``safe`` (formula injection
        defused, for the CSV)."""
        return [
            self.query.local_time(),
            kind_label_sql(),
            safe(Order.public_id),
            *[safe(column) for _, column in self.query.details],
            safe(Order.product),
            LedgerEntry.provider,
            safe(LedgerEntry.provider_transaction_id),
        ]

    def rows(self) -> Iterator[tuple[object, ...]]:
        """The movements as the workbook's cells (the CSV is written by the database, from
        :meth:`text_query`): texts as they are."""
        select = self._select(
            *self._described(safe=lambda column: column),
            LedgerEntry.kind,
            LedgerEntry.amount,
            LedgerEntry.currency,
            LedgerEntry.coupon_code,
            LedgerEntry.discount,
        )
        # Plain rows through the session's connection, times formatted by the database:
        # the ORM's row handling and Python's time zones would cost more than the rest.
        result = db.session.connection().execute(select.execution_options(yield_per=BATCH))
        for rows in result.partitions():
            for when, *described, kind, amount, currency, coupon, discount in rows:
                amounts = _amounts(kind, amount, currency, discount)
                yield (
                    datetime.fromisoformat(when),
                    *described,
                    *amounts[:4],
                    currency,
                    coupon,
                    amounts[4],
                )

    def footer(self) -> Iterator[list[object]]:
        """A grand total row per currency: gross, fees, refunds and net of the rows, each
        a SUMIFS over its column for that currency (its value summed by the database)."""
        for currency, sums in sorted(self.totals.by_currency().items()):
            row: list[object] = [None] * len(self.headers)
            row[0] = str(_l("Total"))
            for offset, name in enumerate(self.AMOUNTS):
                row[self.gross_column + offset] = ColumnTotal(
                    major(sums[name], currency), self.currency_column, currency
                )
            row[self.currency_column] = currency
            yield row

    def text_query(self) -> sa.Select:
        """The rows as text, as :meth:`rows` gives them, for the database to write."""
        gross, fee, refunds = _split_sql()
        currency = LedgerEntry.currency
        return self._select(
            *self._described(),
            major_sql(gross, currency),
            major_sql(fee, currency),
            major_sql(refunds, currency),
            major_sql(LedgerEntry.amount, currency),
            currency,
            defused(LedgerEntry.coupon_code),
            major_sql(LedgerEntry.discount, currency),
        )

    def line_parts(self) -> tuple[sa.Select, list[dict[str, object]]]:
        """SQLite: the rows' CSV lines, by ranges of :data:`PART_IDS` ledger ids."""
        return self._select(self._line_sql().label("line"), parted=True), self.query.parts

    def _line_sql(self) -> sa.ColumnElement[str]:
        """SQLite: a movement's CSV line, as :meth:`text_query`'s cells would be joined.
        One printf a row with the amounts written into it, from a line format per number
        of decimals and kind of movement: a row tests its currency and its kind once, and
        the split's zeros are text of the format (a printf per amount, each testing the
        currency and the kind, was two fifths of a line's cost)."""
        kind, amount = LedgerEntry.kind, LedgerEntry.amount
        in_currency = []
        for exponent, codes in _CODES_BY_EXPONENT:
            net = printed_major(amount, exponent)
            zero = Printed(str(major(0, codes[0])))
            by_kind = sa.case(
                (kind == "payment", self._line_of(net, zero, zero, net, exponent)),
                (
                    kind == "fee",
                    self._line_of(zero, printed_major(-amount, exponent), zero, net, exponent),
                ),
                else_=self._line_of(zero, zero, net, net, exponent),
            )
            in_currency.append((LedgerEntry.currency.in_(codes), by_kind))
        # A currency it does not know: the amounts left empty, as major_sql leaves them.
        empty = Printed("")
        return sa.case(*in_currency, else_=self._line_of(empty, empty, empty, empty, None))

    def _line_of(
        self, gross: Printed, fee: Printed, refunds: Printed, net: Printed, exponent: int | None
    ) -> sa.ColumnElement[str]:
        """SQLite: the CSV line of a movement with these amounts and a currency of
        ``exponent`` decimals (None: amounts unknown)."""
        discount = (
            Printed("") if exponent is None else printed_major(LedgerEntry.discount, exponent)
        )
        return csv_line_sql(
            [
                *self._described(),
                gross,
                fee,
                refunds,
                net,
                LedgerEntry.currency,
                defused(LedgerEntry.coupon_code),
                discount,
            ]
        )


def _split_sql() -> tuple[sa.ColumnElement[int], ...]:
    """SQL for :func:`_amounts`' gross, fee and refunds of a movement (minor units)."""
    kind, amount = LedgerEntry.kind, LedgerEntry.amount
    return (
        sa.case((kind == "payment", amount), else_=0),
        sa.case((kind == "fee", -amount), else_=0),
        sa.case((kind.in_(["payment", "fee"]), 0), else_=amount),
    )


@functools.lru_cache(maxsize=4096)
def _amounts(
    kind: str, amount: int, currency: str, discount: int
) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
    """A movement's gross, fee, refunds, net and discount. A payment is gross; a fee entry
    is money the provider kept (shown as a positive fee); refunds, chargebacks and won
    chargebacks are refunds. Gross − fee + refunds is the net."""
    gross, fee, refunds = _split(kind, amount)
    return (
        major(gross, currency),
        major(fee, currency),
        major(refunds, currency),
        major(amount, currency),
        major(discount, currency),
    )


def _split(kind: str, amount: int) -> tuple[int, int, int]:
    """Gross, fee and refunds of a movement, as :func:`_split_sql` splits them."""
    if kind == "payment":
        return amount, 0, 0
    if kind == "fee":
        return 0, -amount, 0
    return 0, 0, amount


class RevenueTotals(Exporter):
    """Net totals (gross less fees and refunds) by day, and by month × product × provider,
    of the movements the rows list."""

    title = _l("Totals")
    headers = (_l("Period"), _l("Product"), _l("Provider"), _l("Currency"), _l("Net"))
    widths = (12, 24, 10, 8, 14)

    def __init__(self, query: LedgerQuery, *, jobs: int = 1) -> None:
        self.query = query
        self.jobs = jobs

    @functools.cached_property
    def _sums(self) -> list[tuple]:
        """Amount (minor units) and count of movements by day × product × provider ×
        currency × kind, summed by the database; with ``jobs`` > 1 by parts of the ledger
        side by side (see :func:`core.db.read_parts`). A key may come more than once (a
        part each, an hour each: see :meth:`LedgerQuery.day_group`): every use adds them
        up."""
        group, day_of = self.query.day_group()
        group = group.label("day")
        keys = (group, Order.product, LedgerEntry.provider, LedgerEntry.currency, LedgerEntry.kind)
        sums = (sa.func.sum(LedgerEntry.amount), sa.func.count(LedgerEntry.id))
        if self.jobs == 1 or is_postgresql():
            select = self.query.select(*keys, *sums).group_by("day", *keys[1:])
            parts: Iterable[Sequence[tuple]] = [db.session.execute(select).all()]
        else:
            select = self.query.select(*keys, *sums, parted=True).group_by("day", *keys[1:])
            parts = read_parts(select, self.query.parts, jobs=self.jobs)
        return [(day_of(group), *sums) for rows in parts for group, *sums in rows]

    @property
    def movements(self) -> int:
        """How many movements the totals add up."""
        return sum(count for *_, count in self._sums)

    def by_day(self) -> dict[tuple[str, str], int]:
        """Net minor units by (day, currency)."""
        sums: dict[tuple[str, str], int] = defaultdict(int)
        for day, _, _, currency, _, amount, _ in self._sums:
            sums[(day, currency)] += amount
        return sums

    def by_currency(self) -> dict[str, dict[str, int]]:
        """Gross, fee, refunds and net (minor units) by currency: the grand totals."""
        sums: dict[str, dict[str, int]] = defaultdict(
            lambda: {"gross": 0, "fee": 0, "refunds": 0, "net": 0}
        )
        for _, _, _, currency, kind, amount, _ in self._sums:
            gross, fee, refunds = _split(kind, amount)
            totals = sums[currency]
            totals["gross"] += gross
            totals["fee"] += fee
            totals["refunds"] += refunds
            totals["net"] += amount
        return dict(sums)

    def rows(self) -> Iterator[list[object]]:
        by_month: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for day, product, provider, currency, _, amount, _ in self._sums:
            by_month[(day[:7], product, provider, currency)] += amount
        for (day, currency), amount in sorted(self.by_day().items()):
            yield [day, "", "", currency, major(amount, currency)]
        for (month, product, provider, currency), amount in sorted(by_month.items()):
            yield [month, product, provider, currency, major(amount, currency)]
