"""Reconciliation: a provider's statement read line by line and matched against our ledger
by the provider's transaction ids.

Statements: WeChat Pay's daily bill (``bill_type=ALL``, the text wechatpy's
``download_bill`` returns: a header, one line per payment or refund with every field
prefixed by a backtick, then the totals) and Stripe's itemized balance report
(``balance_change_from_activity.itemized``, CSV, with ``payment_intent_id``).

Each statement line is a movement: a payment, a refund, a dispute or a dispute reversed,
with its amount and the provider's fee. A line with no ledger entry is *missing on our
side*; a ledger entry of the statement's days with no line is *missing on theirs*; a
line whose amount differs from our entry, or whose fee differs from the fee recorded
before, *differs*. Importing records each matched line's fee as a ``fee`` ledger entry
(once: a fee already recorded is compared, never changed), so revenue exports show gross,
fee and net.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask_babel import gettext as _

from core import audit
from core.db import db
from core.money import CURRENCIES
from payments import wechat_bill
from payments.accounts import account_of
from payments.models import Dispute, LedgerEntry, Order, PaymentAccount, Reconciliation


class StatementError(ValueError):
    """The file is not a statement we can read; the message says why, Chinese first."""


@dataclass(frozen=True, slots=True)
class StatementLine:
    #: ``payment``, ``refund``, ``dispute`` or ``dispute_won``, as our ledger names them.
    kind: str
    #: The provider's id our ledger knows the movement by.
    reference: str
    occurred_at: datetime
    #: Signed minor units, as in our ledger: money in positive.
    amount: int
    #: Minor units the provider kept (negative when it gave a fee back).
    fee: int
    currency: str


#: WeChat Pay's bills are in Beijing time, Stripe's reports in UTC.
PROVIDER_ZONES = {"wechatpay": ZoneInfo("Asia/Shanghai"), "stripe": ZoneInfo("UTC")}

_SIGNED_AMOUNT = re.compile(r"(-?)(\d{1,12})(?:\.(\d{1,3}))?", re.ASCII)


def _minor(text: str, currency: str, column: str) -> int:
    """A signed decimal amount in major units as exact minor units (``column``: where it
    was, as the statement names it)."""
    exponent = CURRENCIES[currency]
    match = _SIGNED_AMOUNT.fullmatch(text.strip())
    if match is None or len(match.group(3) or "") > exponent:
        raise StatementError(
            _("Not an amount in the column %(column)s: %(text)s", column=column, text=text)
        )
    sign, whole, fraction = match.groups()
    minor = int(whole) * 10**exponent + int((fraction or "").ljust(exponent, "0") or 0)
    return -minor if sign else minor


def _time(text: str, zone: ZoneInfo, number: int) -> datetime:
    """A statement's wall-clock time in the provider's zone, as aware UTC."""
    try:
        local = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
    except ValueError as error:
        raise StatementError(_("Bad time on line %(number)s", number=number)) from error
    return local.astimezone(UTC)


def _currency(text: str) -> str:
    currency = text.strip().upper()
    if currency not in CURRENCIES:
        raise StatementError(_("Unsupported currency: %(currency)s", currency=text))
    return currency


def _columns(header: list[str], wanted: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Where each wanted column is: the first of its names the header has."""
    found = {}
    for key, names in wanted.items():
        index = next((header.index(n) for n in names if n in header), None)
        if index is None:
            raise StatementError(_("The statement has no column %(column)s", column=names[0]))
        found[key] = index
    return found


def read_wechat_bill(text: str) -> list[StatementLine]:
    """The payments and refunds of a WeChat Pay bill (``bill_type=ALL``)."""
    rows = [line for line in text.replace("\r", "").split("\n") if line.strip()]
    if not rows or not rows[0].startswith(wechat_bill.FIRST_COLUMN):
        raise StatementError(_("Not a WeChat Pay bill"))
    columns = _columns(rows[0].split(","), wechat_bill.COLUMNS)
    zone = PROVIDER_ZONES["wechatpay"]
    lines = []
    for number, row in enumerate(rows[1:], start=2):
        if row.startswith(wechat_bill.TOTALS_MARKER):
            break  # the totals follow
        cells = [cell.strip().removeprefix("`") for cell in row.split(",")]
        if len(cells) < len(rows[0].split(",")):
            raise StatementError(_("Line %(number)s is incomplete", number=number))
        occurred_at = _time(cells[columns["time"]], zone, number)
        currency = _currency(cells[columns["currency"]])
        status = cells[columns["status"]]
        fee = _minor(cells[columns["fee"]], currency, wechat_bill.COLUMNS["fee"][0])
        if status == "SUCCESS":
            kind, reference = "payment", cells[columns["transaction"]]
            amount = _minor(cells[columns["amount"]], currency, wechat_bill.COLUMNS["amount"][0])
        elif status == "REFUND":
            kind, reference = "refund", cells[columns["refund_id"]]
            refunded = cells[columns["refund_amount"]]
            amount = -_minor(refunded, currency, wechat_bill.COLUMNS["refund_amount"][0])
        else:
            continue  # revoked and other attempts moved no money
        lines.append(StatementLine(kind, reference, occurred_at, amount, fee, currency))
    return lines


#: Stripe's reporting categories that are movements of our orders.
_STRIPE_KINDS = {
    "charge": "payment",
    "refund": "refund",
    "dispute": "dispute",
    "dispute_reversal": "dispute_won",
}
_STRIPE_COLUMNS = {
    "time": ("created_utc",),
    "category": ("reporting_category",),
    "source": ("source_id",),
    "payment_intent": ("payment_intent_id",),
    "currency": ("currency",),
    "gross": ("gross",),
    "fee": ("fee",),
}


def read_stripe_report(text: str) -> list[StatementLine]:
    """The charges, refunds and disputes of Stripe's itemized balance report. Payouts,
    transfers and Stripe's own fees are not movements of our orders and are skipped."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = next(reader, None)
    if not header or "balance_transaction_id" not in header:
        raise StatementError(_("Not a Stripe itemized balance report"))
    columns = _columns(header, _STRIPE_COLUMNS)
    zone = PROVIDER_ZONES["stripe"]
    lines = []
    for number, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) < len(header):
            raise StatementError(_("Line %(number)s is incomplete", number=number))
        kind = _STRIPE_KINDS.get(cells[columns["category"]])
        if kind is None:
            continue
        occurred_at = _time(cells[columns["time"]], zone, number)
        currency = _currency(cells[columns["currency"]])
        reference = cells[columns["payment_intent" if kind == "payment" else "source"]]
        lines.append(
            StatementLine(
                kind,
                reference,
                occurred_at,
                _minor(cells[columns["gross"]], currency, "gross"),
                _minor(cells[columns["fee"]], currency, "fee"),
                currency,
            )
        )
    return lines


READERS = {"wechatpay": read_wechat_bill, "stripe": read_stripe_report}


@dataclass(frozen=True, slots=True)
class Difference:
    #: ``missing_ours``, ``missing_theirs``, ``amount`` or ``fee``.
    problem: str
    kind: str
    reference: str
    day: date
    ours: int | None
    theirs: int | None
    currency: str


@dataclass
class DaySummary:
    day: date
    theirs: int = 0
    ours: int = 0
    matched: int = 0
    missing_ours: int = 0
    missing_theirs: int = 0
    differ: int = 0
    #: Per currency: the statement's gross and fees, minor units.
    gross: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fees: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class Report:
    reconciliation: Reconciliation
    days: list[DaySummary]
    differences: list[Difference]


def statement_scope(provider: str, community_id: int | None) -> sa.ColumnElement[bool]:
    """SQL on ``Order``: the orders whose money a statement of ``provider`` covers. A
    community's own account's statement: that community's orders. The install's: the
    orders of every community without an account of its own there."""
    if community_id is not None and account_of(community_id, provider) is not None:
        return Order.community_id == community_id
    own = sa.select(PaymentAccount.community_id).where(PaymentAccount.provider == provider)
    return Order.community_id.not_in(own)


def _ours(
    provider: str, start: datetime, end: datetime, scope: sa.ColumnElement[bool]
) -> dict[tuple[str, str], LedgerEntry]:
    """Our movements at ``provider`` between two times, of the orders in ``scope`` (see
    :func:`statement_scope`), by (kind, the provider's id)."""
    rows = db.session.execute(
        sa.select(LedgerEntry, Dispute.external_id)
        .join(Order, Order.id == LedgerEntry.order_id)
        .outerjoin(Dispute, Dispute.id == LedgerEntry.dispute_id)
        .where(
            scope,
            LedgerEntry.provider == provider,
            LedgerEntry.kind != "fee",
            LedgerEntry.created_at >= start,
            LedgerEntry.created_at < end,
        )
    ).all()
    return {
        (entry.kind, dispute_id or entry.provider_transaction_id or f"ledger:{entry.id}"): entry
        for entry, dispute_id in rows
    }


def _recorded_fees(provider: str, references: list[str]) -> dict[str, int]:
    fees: dict[str, int] = {}
    for start in range(0, len(references), 500):
        for reference, amount in db.session.execute(
            sa.select(LedgerEntry.provider_transaction_id, LedgerEntry.amount).where(
                LedgerEntry.provider == provider,
                LedgerEntry.kind == "fee",
                LedgerEntry.provider_transaction_id.in_(references[start : start + 500]),
            )
        ):
            fees[reference] = -amount
    return fees


def reconcile(
    provider: str,
    lines: list[StatementLine],
    *,
    filename: str,
    actor: str,
    now: datetime,
    community_id: int | None = None,
) -> Report:
    """Match ``lines`` of ``provider``'s statement (of ``community_id``'s own account,
    or the install's when None or the community has none) with our ledger over the
    statement's days (the provider's calendar), record the fees of matched lines not
    recorded before, and keep a record of the import (flushed, audited: filed under the
    community when it is its own account's statement). The caller commits."""
    zone = PROVIDER_ZONES[provider]
    scope = statement_scope(provider, community_id)
    day_of = {line: line.occurred_at.astimezone(zone).date() for line in lines}
    days = sorted(set(day_of.values()))
    summaries = {day: DaySummary(day) for day in days}
    differences: list[Difference] = []
    ours: dict[tuple[str, str], LedgerEntry] = {}
    for day in days:
        start = datetime.combine(day, datetime.min.time(), zone).astimezone(UTC)
        ours.update(_ours(provider, start, start + timedelta(days=1), scope))
    for entry in ours.values():
        summaries[entry.created_at.astimezone(zone).date()].ours += 1
    fees = _recorded_fees(provider, [line.reference for line in lines])
    fees_recorded = 0
    for line in lines:
        summary = summaries[day_of[line]]
        summary.theirs += 1
        summary.gross[line.currency] += line.amount
        summary.fees[line.currency] += line.fee
        entry = ours.pop((line.kind, line.reference), None)
        if entry is None:
            summary.missing_ours += 1
            differences.append(
                Difference(
                    "missing_ours",
                    line.kind,
                    line.reference,
                    day_of[line],
                    None,
                    line.amount,
                    line.currency,
                )
            )
            continue
        summary.matched += 1
        if (entry.amount, entry.currency) != (line.amount, line.currency):
            summary.differ += 1
            differences.append(
                Difference(
                    "amount",
                    line.kind,
                    line.reference,
                    day_of[line],
                    entry.amount,
                    line.amount,
                    line.currency,
                )
            )
            continue
        if line.reference in fees:
            if fees[line.reference] != line.fee:
                summary.differ += 1
                differences.append(
                    Difference(
                        "fee",
                        line.kind,
                        line.reference,
                        day_of[line],
                        fees[line.reference],
                        line.fee,
                        line.currency,
                    )
                )
        elif line.fee:
            db.session.add(
                LedgerEntry(
                    created_at=line.occurred_at,
                    kind="fee",
                    amount=-line.fee,
                    currency=line.currency,
                    order_id=entry.order_id,
                    payment_id=entry.payment_id,
                    provider=provider,
                    provider_transaction_id=line.reference,
                    discount=0,
                )
            )
            fees[line.reference] = line.fee
            fees_recorded += 1
    for (kind, reference), entry in sorted(ours.items(), key=lambda item: item[1].id):
        day = entry.created_at.astimezone(zone).date()
        summaries[day].missing_theirs += 1
        differences.append(
            Difference("missing_theirs", kind, reference, day, entry.amount, None, entry.currency)
        )
    own = community_id is not None and account_of(community_id, provider) is not None
    record = Reconciliation(
        provider=provider,
        filename=filename[:200],
        first_day=days[0] if days else None,
        last_day=days[-1] if days else None,
        lines=len(lines),
        matched=sum(s.matched for s in summaries.values()),
        problems=len(differences),
        fees_recorded=fees_recorded,
        imported_at=now,
        imported_by=actor,
    )
    db.session.add(record)
    audit.record(
        "reconciliation.imported",
        record,
        actor=actor,
        data={
            "provider": provider,
            "community": community_id,
            "lines": len(lines),
            "problems": len(differences),
        },
        now=now,
        # Filed under the community whose own account it is (its staff see it), else
        # under the install.
        community_id=community_id if own else None,
    )
    return Report(record, [summaries[day] for day in days], differences)
