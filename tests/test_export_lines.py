"""The revenue export's fast paths write what the plain ones do: SQLite's one printf a line
(amounts written into it, a line format per number of decimals and kind) byte for byte
as the printf of a printf per cell did, and cell for cell as Python formats the rows, on
both databases; the totals' days, grouped by UTC hour or by local date, as Python reads
the movements' times in the community's zone."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from flask_babel import force_locale

from core.clock import utcnow
from core.db import db, is_postgresql
from core.exporters import Exporter, csv_lines, safe_row
from membership.exports import community_revenue
from membership.models import Community
from payments.models import Order, Payment
from tests.helpers import join_and_pay
from tests.test_exports import _ledger_entry

AWKWARD = '读书会, "正式"\r\n成员'
#: (kind, amount, currency, extra fields): every kind, each number of decimals (2, 0, 3),
#: refunds and fees negative, text needing quotes, and missing values.
MOVEMENTS = [
    ("fee", -60, "CNY", {"provider_transaction_id": None}),
    ("refund", -5, "CNY", {"provider_transaction_id": 'tx,"1"\n'}),
    ("refund", -100, "CNY", {"coupon_code": "会员,八折"}),
    ("payment", 123456, "JPY", {"coupon_code": '-5"OFF"', "discount": 1000}),
    ("fee", -7, "JPY", {}),
    ("refund", -123, "JPY", {"provider_transaction_id": ""}),
    ("dispute", -9900, "CNY", {}),
    ("dispute_won", 9900, "CNY", {"coupon_code": ""}),
    ("payment", 100000007, "CNY", {"discount": 10}),
    ("payment", 1234567, "KWD", {"discount": 5}),
    ("fee", -1, "KWD", {}),
    ("refund", -1234567, "KWD", {}),
    ("dispute", -1, "BHD", {}),
]


def _awkward_ledger(app) -> None:
    """Two paid orders (one of them without a member: no member number), their products
    awkward text, and :data:`MOVEMENTS` of the first."""
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        first, second = db.session.scalars(sa.select(Payment).order_by(Payment.id)).all()
        db.session.get(Order, first.order_id).product = AWKWARD
        db.session.get(Order, second.order_id).member_id = None
        for kind, amount, currency, extra in MOVEMENTS:
            _ledger_entry(first, kind=kind, amount=amount, currency=currency, **extra)
        db.session.commit()


def _revenue_rows():
    community = db.session.scalar(sa.select(Community))
    today = utcnow().date()
    return community_revenue(community, today - timedelta(days=1), today + timedelta(days=1))


def test_database_lines_read_as_python_formats_the_rows(app, demo):
    """Cell for cell, on both databases, every awkward cell and amount as :func:`major`
    and Python's time zones make it."""
    _awkward_ledger(app)
    with app.app_context(), force_locale("zh_CN"):
        rows, _ = _revenue_rows()
        # The workbook's cells, defused as the CSV's are.
        expected = [
            ["" if cell is None else str(cell) for cell in safe_row(row)] for row in rows.rows()
        ]
        rows.rows = lambda: pytest.fail("the database writes this CSV")
        text = b"".join(csv_lines(rows)).decode()
    assert len(expected) == 2 + len(MOVEMENTS)
    written = list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")))
    assert written[1:] == expected
    by_kind = {(row[1], row[11]): row for row in written[1:]}
    assert by_kind[("渠道手续费", "KWD")][7:11] == ["0.000", "0.001", "0.000", "-0.001"]
    assert by_kind[("拒付", "BHD")][7:11] == ["0.000", "0.000", "-0.001", "-0.001"]
    assert by_kind[("渠道手续费", "JPY")][7:11] == ["0", "7", "0", "-7"]
    assert written[3][4] == AWKWARD and written[3][6] == ""  # no transaction id
    assert written[2][3] == ""  # the second order has no member


def test_sqlite_line_is_the_printf_of_each_cell_byte_for_byte(app, demo):
    """The line format per kind and number of decimals writes, byte for byte, what joining
    the text query's cells (a printf per amount) wrote before it."""
    with app.app_context():
        if is_postgresql():
            pytest.skip("PostgreSQL writes the text query's cells itself (COPY)")
    _awkward_ledger(app)
    with app.app_context(), force_locale("zh_CN"):
        rows, _ = _revenue_rows()
        fast = b"".join(csv_lines(rows))
        rows.line_parts = lambda: Exporter.line_parts(rows)
        cell_by_cell = b"".join(csv_lines(rows))
    lines = 1 + 2 + len(MOVEMENTS)  # the header, two payments, the movements
    assert fast.count(b"\r\n") == lines + 1 + len(MOVEMENTS)  # and the first order's product
    assert fast == cell_by_cell


@pytest.mark.parametrize(
    "zone",
    [
        "America/New_York",  # whole hours, daylight saving ends 2026-11-01 06:00 UTC
        "Asia/Kolkata",  # half an hour: grouped by the local day itself on SQLite
        "Australia/Lord_Howe",  # half an hour of daylight saving
        "Asia/Shanghai",
    ],
)
def test_totals_by_day_as_python_reads_the_times(app, demo, zone):
    """Movements either side of the community's midnights, and of a change of offset, are
    summed on the day Python's time zones give them, whichever way the database groups."""
    join_and_pay(app.test_client(), "main")
    first_day = date(2026, 10, 30)
    last_day = first_day + timedelta(days=4)
    start = datetime(2026, 10, 30, tzinfo=ZoneInfo(zone))
    moments = [
        start + timedelta(hours=hours, seconds=seconds)
        for hours in range(0, 5 * 24, 6)
        for seconds in (-1, 0, 1)
    ]
    moments += [datetime(2026, 11, 1, 5, 59, 59, 999999, tzinfo=UTC) + timedelta(hours=1)]
    expected: dict[tuple[str, str], int] = defaultdict(int)
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        community.time_zone = zone
        payment = db.session.scalar(sa.select(Payment))
        for number, moment in enumerate(moments, start=1):
            _ledger_entry(payment, created_at=moment.astimezone(UTC), amount=number)
            day = moment.astimezone(ZoneInfo(zone)).date()
            if first_day <= day <= last_day:
                expected[(day.isoformat(), payment.currency)] += number
        db.session.commit()
        _, totals = community_revenue(community, first_day, last_day)
        by_day = totals.by_day()
    assert len(expected) == 5
    assert dict(by_day) == dict(expected)  # the order paid today is out of the range
