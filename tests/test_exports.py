"""Finance exports: one row per ledger movement, exact amounts, totals, formula injection
defused; CSV streamed from the admin page, XLSX, and the CLI."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import openpyxl
import pytest
import sqlalchemy as sa

from core import db as core_db
from core.clock import local_timestamp_sql, utc_offsets, utcnow
from core.db import UTCDateTime, begin_snapshot, db, is_postgresql
from core.exporters import csv_lines, defused, safe_row
from membership.cli import seed_demo_community
from membership.exports import community_revenue
from membership.models import Community, Tier
from payments import exports
from payments.exports import major
from payments.models import LedgerEntry, Order, Payment
from tests.conftest import fresh_database
from tests.helpers import join_and_pay, submit_form


def _paid_and_refunded(app, logged_in):
    with app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).name = "=HYPERLINK(1)"
        db.session.commit()
    join_and_pay(app.test_client(), "main")
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        payment_id = db.session.scalars(sa.select(Payment.id).order_by(Payment.id)).first()
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/payments/payments/{payment_id}/refund"
    assert submit_form(logged_in, url, {"amount": "50", "reason": "部分退款"}).status_code == 302
    return community_id


def _range():
    today = utcnow().date()
    return str(today - timedelta(days=1)), str(today + timedelta(days=1))


def read_csv(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))


def test_movements_csv_from_the_admin_page(app, demo, logged_in):
    community_id = _paid_and_refunded(app, logged_in)
    first, last = _range()
    url = f"/admin/communities/{community_id}/export"
    response = logged_in.get(url, query_string={"first_day": first, "last_day": last})
    assert response.mimetype == "text/csv"
    assert response.is_streamed
    rows = read_csv(response)
    assert rows[0][:3] == ["时间 Time", "类型 Kind", "订单号 Order"]
    kinds = [(r[1], r[3], r[7], r[9]) for r in rows[1:]]
    assert kinds == [
        ("payment", "0001", "99.00", "99.00"),
        ("payment", "0002", "99.00", "99.00"),
        ("refund", "0001", "-50.00", "-50.00"),
    ]
    assert {r[4] for r in rows[1:]} == {"'=HYPERLINK(1)"}  # never a live formula
    totals = read_csv(
        logged_in.get(url, query_string={"first_day": first, "last_day": last, "sheet": "totals"})
    )
    assert totals[1][3:] == ["CNY", "148.00"]
    assert sum(Decimal(r[7]) for r in rows[1:]) == Decimal("148.00")


def test_xlsx_holds_both_sheets(app, demo, logged_in):
    community_id = _paid_and_refunded(app, logged_in)
    first, last = _range()
    response = logged_in.get(
        f"/admin/communities/{community_id}/export",
        query_string={"first_day": first, "last_day": last, "format": "xlsx"},
    )
    book = openpyxl.load_workbook(io.BytesIO(response.data))
    movements, totals = book.worksheets
    values = [row for row in movements.iter_rows(min_row=2, values_only=True)]
    assert len(values) == 3
    assert round(sum(row[7] for row in values), 2) == 148.0
    assert next(totals.iter_rows(min_row=2, values_only=True))[4] == 148.0


def test_dates_outside_the_range_are_left_out_and_bad_ranges_refused(app, demo, logged_in):
    community_id = _paid_and_refunded(app, logged_in)
    url = f"/admin/communities/{community_id}/export"
    response = logged_in.get(
        url, query_string={"first_day": "2020-01-01", "last_day": "2020-01-31"}
    )
    assert read_csv(response)[1:] == []
    backwards = logged_in.get(
        url, query_string={"first_day": "2026-02-01", "last_day": "2026-01-01"}
    )
    assert "结束日期早于开始日期" in backwards.text


def test_cli_export(app, demo, logged_in, runner, tmp_path):
    _paid_and_refunded(app, logged_in)
    first, last = _range()
    out = tmp_path / "revenue.csv"
    result = runner.invoke(
        args=[
            "export-revenue",
            "--community",
            "demo",
            "--from",
            first,
            "--to",
            last,
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    assert "148.00" in (tmp_path / "revenue-totals.csv").read_text(encoding="utf-8")


def test_amounts_and_cells():
    assert major(9900, "CNY") == Decimal("99.00")
    assert major(-5, "CNY") == Decimal("-0.05")
    assert major(1000, "JPY") == Decimal("1000")
    for risky in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx"):
        assert safe_row([risky])[0].startswith("'")
    assert safe_row(["读书人", Decimal("-1.00")]) == ["读书人", Decimal("-1.00")]


def test_the_database_defuses_cells_as_safe_row_does(app):
    with app.app_context():
        for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "读书人", "'=x", "a=b", ""):
            assert db.session.scalar(sa.select(defused(sa.literal(text)))) == safe_row([text])[0]


def test_local_times_formatted_by_the_database_across_daylight_saving(app):
    """New York leaves daylight saving on 2026-11-01 at 06:00 UTC: times on both sides read
    as Python reads them, to the second."""
    zone, start = "America/New_York", datetime(2026, 10, 31, tzinfo=UTC)
    end = start + timedelta(days=3)
    assert utc_offsets(zone, start, end) == [
        (datetime(2026, 11, 1, 6, tzinfo=UTC), -4 * 3600),
        (end, -5 * 3600),
    ]
    assert utc_offsets("Asia/Shanghai", start, end) == [(end, 8 * 3600)]
    # Lord Howe Island moves by half an hour; a range starting off the hour finds it exactly.
    odd = datetime(2026, 10, 3, 13, 17, 5, 123, tzinfo=UTC)
    assert utc_offsets("Australia/Lord_Howe", odd, odd + timedelta(days=2))[0] == (
        datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
        int(10.5 * 3600),
    )
    moments = [
        datetime(2026, 11, 1, 5, 59, 59, 999999, tzinfo=UTC) + timedelta(seconds=s)
        for s in (-86400, 0, 1, 3600, 86400)
    ]
    with app.app_context():
        for moment in moments:
            column = sa.literal(moment, UTCDateTime)
            local = db.session.scalar(sa.select(local_timestamp_sql(column, zone, start, end)))
            assert local == moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def _ledger_entry(payment: Payment, **fields) -> LedgerEntry:
    """A movement of ``payment``'s order (added to the session)."""
    entry = LedgerEntry(
        **{
            "created_at": utcnow(),
            "kind": "payment",
            "amount": payment.amount,
            "currency": payment.currency,
            "order_id": payment.order_id,
            "payment_id": payment.id,
            "provider": payment.provider,
            **fields,
        }
    )
    db.session.add(entry)
    return entry


def test_csv_reads_as_the_rows_whoever_writes_it(app, demo):
    """The database writes the movements' CSV itself (PostgreSQL's COPY, SQLite's lines):
    it must read back cell for cell as the rows Python gives (for a workbook), awkward
    text and amounts included."""
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment))
        db.session.get(Order, payment.order_id).product = '=1+1, "正式"\n成员\r'
        for kind, amount, currency, extra in [
            ("fee", -60, "CNY", {"provider_transaction_id": ""}),
            ("refund", -5, "CNY", {"provider_transaction_id": 'tx,"1"'}),
            ("payment", 123456, "JPY", {"coupon_code": "-5OFF", "discount": 1000}),
            ("dispute_won", 0, "USD", {"coupon_code": ""}),
            ("refund", -123, "JPY", {}),
            ("payment", 100000007, "CNY", {"discount": 10}),
        ]:
            _ledger_entry(payment, kind=kind, amount=amount, currency=currency, **extra)
        db.session.commit()
        community = db.session.scalar(sa.select(Community))
        today = utcnow().date()
        rows, _ = community_revenue(community, today - timedelta(days=1), today + timedelta(days=1))
        expected = [["" if cell is None else str(cell) for cell in row] for row in rows.rows()]
        assert len(expected) == 7
        assert expected[2][7:10] == ["-0.05", "0.00", "-0.05"]
        assert expected[3][7:] == ["123456", "0", "123456", "JPY", "'-5OFF", "1000"]
        assert expected[6][7:] == ["1000000.07", "0.00", "1000000.07", "CNY", "", "0.10"]
        rows.rows = lambda: pytest.fail("the database writes this CSV")
        text = "".join(csv_lines(rows))
    written = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert written[0] == rows.headers
    assert written[1:] == expected


@pytest.mark.committing
def test_sqlite_writes_the_parts_side_by_side(tmp_path, _api_server, monkeypatch):
    """On SQLite the CLI's export is read by worker processes, a range of ledger ids
    each: their lines, put together, are the rows in order, each once, and their sums
    the totals."""
    with fresh_database(tmp_path, _api_server) as app, app.app_context():
        if is_postgresql():
            pytest.skip("PostgreSQL writes the whole CSV itself (COPY)")
        seed_demo_community()
        db.session.commit()
    for _ in range(3):
        join_and_pay(app.test_client(), "main")
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment))
        for amount in (-1, -20, 3, -40):
            _ledger_entry(payment, kind="refund", amount=amount, provider_transaction_id="t,x")
        db.session.commit()
        today = utcnow().date()
        community = db.session.scalar(sa.select(Community))
        days = today - timedelta(days=1), today + timedelta(days=1)
        rows, totals = community_revenue(community, *days)
        expected = [["" if cell is None else str(cell) for cell in row] for row in rows.rows()]
        expected_totals = list(totals.rows())
        submitted = []
        monkeypatch.setattr(exports, "PART_IDS", 3)
        monkeypatch.setattr(core_db, "ProcessPoolExecutor", _Recording(submitted))
        begin_snapshot()
        rows, totals = community_revenue(community, *days, jobs=2)
        assert totals.movements == 7
        text = "".join(csv_lines(rows, jobs=2))
        db.session.rollback()
    assert len(submitted) == 6  # ledger ids 1–7, three at a time: the totals, then the rows
    assert len(expected) == 7
    assert list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))[1:] == expected
    assert list(totals.rows()) == expected_totals


def _Recording(submitted: list):
    """A ProcessPoolExecutor that notes what is submitted to it."""

    class Recording(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(args)
            return super().submit(fn, *args, **kwargs)

    return Recording


@pytest.mark.committing
def test_totals_and_movements_read_the_same_ledger(tmp_path, _api_server):
    """A payment committed between reading the totals and reading the movements is in
    neither: the export reads one snapshot, so its rows always add up to its totals."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        join_and_pay(app.test_client(), "main")
        with app.app_context():
            today = utcnow().date()
            begin_snapshot()
            community = db.session.scalar(sa.select(Community))
            days = today - timedelta(days=1), today + timedelta(days=1)
            rows, totals = community_revenue(community, *days)
            assert rows.count() == 1
            if is_postgresql():  # SQLite's snapshot holds the write lock: nobody can add
                with app.app_context():
                    _ledger_entry(db.session.scalar(sa.select(Payment)))
                    db.session.commit()
            lines = list(csv.reader(io.StringIO("".join(csv_lines(rows)))))
            assert [line[9] for line in lines[1:]] == ["99.00"]
            assert [row[4] for row in totals.rows()] == [Decimal("99.00")] * 2
        with app.app_context():
            assert db.session.scalar(sa.select(sa.func.count(LedgerEntry.id))) == (
                2 if is_postgresql() else 1
            )
