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
from flask_babel import force_locale

from core import db as core_db
from core import security
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
    assert rows[0][:3] == ["时间", "类型", "订单号"]
    assert rows[0][7:11] == ["收款", "手续费", "退款", "净额"]
    kinds = [(r[1], r[3], r[7], r[9], r[10]) for r in rows[1:]]
    assert kinds == [
        ("收款", "0001", "99.00", "0.00", "99.00"),
        ("收款", "0002", "99.00", "0.00", "99.00"),
        ("退款", "0001", "0.00", "-50.00", "-50.00"),
    ]
    assert {r[4] for r in rows[1:]} == {"'=HYPERLINK(1)"}  # never a live formula
    totals = read_csv(
        logged_in.get(url, query_string={"first_day": first, "last_day": last, "sheet": "totals"})
    )
    assert totals[0] == ["期间", "产品", "渠道", "币种", "净额"]
    assert totals[1][3:] == ["CNY", "148.00"]
    assert sum(Decimal(r[10]) for r in rows[1:]) == Decimal("148.00")
    logged_in.get("/lang/en")
    english = read_csv(logged_in.get(url, query_string={"first_day": first, "last_day": last}))
    assert english[0][:4] == ["Time", "Kind", "Order", "Member number"]
    assert [r[1] for r in english[1:]] == ["Payment", "Payment", "Refund"]


def _workbook(logged_in, community_id: int, **options) -> openpyxl.Workbook:
    first, last = _range()
    response = logged_in.get(
        f"/admin/communities/{community_id}/export",
        query_string={"first_day": first, "last_day": last, "format": "xlsx"},
    )
    return openpyxl.load_workbook(io.BytesIO(response.data), **options)


def test_the_workbook_is_ready_for_an_accountant(app, demo, logged_in):
    """Real date-time cells on the community's clock, a frozen header with filters,
    column widths, gross/fees/refunds/net and a total row per currency that sums them."""
    community_id = _paid_and_refunded(app, logged_in)
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).order_by(Payment.id))
        _ledger_entry(payment, kind="fee", amount=-60, provider_transaction_id="fee-1")
        _ledger_entry(payment, kind="payment", amount=2500, currency="USD")
        db.session.commit()
        ledger = db.session.scalars(
            sa.select(LedgerEntry.created_at).order_by(LedgerEntry.id)
        ).all()
    book = _workbook(logged_in, community_id)
    movements, totals = book.worksheets
    assert (movements.title, totals.title) == ("流水", "汇总")
    header = [cell.value for cell in movements[1]]
    assert header[:3] == ["时间", "类型", "订单号"]
    assert header[7:12] == ["收款", "手续费", "退款", "净额", "币种"]
    assert movements.freeze_panes == "A2"
    assert movements.auto_filter.ref == "A1:N6"
    assert movements.column_dimensions["A"].width > 18  # the date-times fit
    rows = list(movements.iter_rows(min_row=2, values_only=True))
    data, footer = rows[:5], rows[5:]
    shanghai = ZoneInfo("Asia/Shanghai")
    for row, moment in zip(data, ledger, strict=True):
        assert isinstance(row[0], datetime)
        assert row[0] == moment.astimezone(shanghai).replace(tzinfo=None, microsecond=0)
    assert [row[1] for row in data] == ["收款", "收款", "退款", "渠道手续费", "收款"]
    assert data[3][7:11] == (0, 0.6, 0, -0.6)
    assert [row[0] for row in footer] == ["合计", "合计"]
    assert [row[11] for row in footer] == ["CNY", "USD"]
    assert footer[0][7].startswith("=SUMIFS(H2:H6,L2:L6,")  # a live total, not a typed one
    values = _workbook(logged_in, community_id, data_only=True).worksheets[0]
    cny, usd = list(values.iter_rows(min_row=7, values_only=True))
    for column in range(7, 11):
        expected = sum(Decimal(str(row[column])) for row in data if row[11] == "CNY")
        assert Decimal(str(cny[column])) == expected, column
    assert cny[7:11] == (198.0, 0.6, -50.0, 147.4)
    assert usd[7:11] == (25.0, 0, 0, 25.0)
    assert next(iter(totals.iter_rows(min_row=2, values_only=True)))[3:] == ("CNY", 147.4)


def test_export_page_offers_presets_on_the_community_calendar(app, demo, logged_in):
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/communities/{community_id}/export"
    page = logged_in.get(url).text
    assert all(f"preset={key}" in page for key in ("this_month", "last_month", "this_year"))
    assert "上月" in page and "本季度" in page
    today = utcnow().astimezone(ZoneInfo("Asia/Shanghai")).date()
    last_month_end = today.replace(day=1) - timedelta(days=1)
    filled = logged_in.get(url, query_string={"preset": "last_month"})
    assert filled.mimetype == "text/html"  # filled in, not exported yet
    assert f'value="{last_month_end.replace(day=1)}"' in filled.text
    assert f'value="{last_month_end}"' in filled.text
    quarter = logged_in.get(url, query_string={"preset": "this_quarter"}).text
    first = today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1)
    assert f'value="{first}"' in quarter and f'value="{today}"' in quarter


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


def _export_command(runner, first: str, last: str, out, *more: str):
    args = ["export-revenue", "--community", "demo", "--from", first, "--to", last]
    return runner.invoke(args=[*args, "--out", str(out), *more])


def test_cli_export(app, demo, logged_in, runner, tmp_path):
    _paid_and_refunded(app, logged_in)
    first, last = _range()
    out = tmp_path / "revenue.csv"
    result = _export_command(runner, first, last, out)
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    assert lines[0].lstrip("\ufeff").startswith("时间,类型,订单号,成员编号")  # zh_CN by default
    assert "148.00" in (tmp_path / "revenue-totals.csv").read_text(encoding="utf-8")
    book = tmp_path / "revenue.xlsx"
    assert _export_command(runner, first, last, book, "--locale", "en").exit_code == 0
    sheet = openpyxl.load_workbook(book).worksheets[0]
    assert [cell.value for cell in sheet[1]][:2] == ["Time", "Kind"]
    assert sheet["B2"].value == "Payment"


def test_cli_refuses_a_reversed_range(app, demo, runner, tmp_path):
    out = tmp_path / "revenue.csv"
    result = _export_command(runner, "2026-02-01", "2026-01-01", out)
    assert result.exit_code == 1
    assert "--to 2026-01-01 is before --from 2026-02-01" in result.output
    assert not out.exists()


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
            ("refund", -1234567, "KWD", {}),
        ]:
            _ledger_entry(payment, kind=kind, amount=amount, currency=currency, **extra)
        db.session.commit()
        community = db.session.scalar(sa.select(Community))
        today = utcnow().date()
        rows, _ = community_revenue(community, today - timedelta(days=1), today + timedelta(days=1))
        with force_locale("en"):
            # The workbook's cells, defused as the CSV's are.
            expected = [
                ["" if cell is None else str(cell) for cell in safe_row(row)] for row in rows.rows()
            ]
            assert len(expected) == 8
            assert expected[1][1:2] + expected[1][7:11] == [
                "Provider fee",
                *["0.00", "0.60", "0.00", "-0.60"],
            ]
            assert expected[2][7:11] == ["0.00", "0.00", "-0.05", "-0.05"]
            assert expected[3][7:] == ["123456", "0", "0", "123456", "JPY", "'-5OFF", "1000"]
            assert expected[6][7:] == [
                "1000000.07",
                "0.00",
                "0.00",
                "1000000.07",
                "CNY",
                "",
                "0.10",
            ]
            assert expected[7][7:12] == ["0.000", "0.000", "-1234.567", "-1234.567", "KWD"]
            rows.rows = lambda: pytest.fail("the database writes this CSV")
            text = b"".join(csv_lines(rows)).decode()
            headers = [str(header) for header in rows.headers]
    written = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert written[0] == headers
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
        with force_locale("zh_CN"):
            expected = [["" if c is None else str(c) for c in row] for row in rows.rows()]
        expected_totals = list(totals.rows())
        submitted = []
        monkeypatch.setattr(exports, "PART_IDS", 3)
        monkeypatch.setattr(core_db, "ProcessPoolExecutor", _Recording(submitted))
        begin_snapshot()
        rows, totals = community_revenue(community, *days, jobs=2)
        assert totals.movements == 7
        with force_locale("zh_CN"):
            text = b"".join(csv_lines(rows, jobs=2)).decode()
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
            with force_locale("zh_CN"):
                lines = list(csv.reader(io.StringIO(b"".join(csv_lines(rows)).decode())))
            assert [line[10] for line in lines[1:]] == ["99.00"]
            assert [row[4] for row in totals.rows()] == [Decimal("99.00")] * 2
        with app.app_context():
            assert db.session.scalar(sa.select(sa.func.count(LedgerEntry.id))) == (
                2 if is_postgresql() else 1
            )


def test_the_workbook_writes_texts_as_they_are_never_as_formulas(app, demo, logged_in):
    """A workbook's strings are string cells, which no spreadsheet runs: an order number
    starting with "-" (one in 64 of those made before new ones stopped starting so) and a
    tier named like a formula read as they are, not with the CSV's apostrophe."""
    community_id = _paid_and_refunded(app, logged_in)
    with app.app_context():
        order = db.session.scalar(sa.select(Order).order_by(Order.id))
        order.public_id = "-yVu8TqmzUUFDR3OnR14cg"
        db.session.commit()
    movements = _workbook(logged_in, community_id).worksheets[0]
    first = next(movements.iter_rows(min_row=2, max_row=2))
    assert (first[2].value, first[2].data_type) == ("-yVu8TqmzUUFDR3OnR14cg", "s")
    assert (first[4].value, first[4].data_type) == ("=HYPERLINK(1)", "s")


def test_new_tokens_never_start_with_a_minus(monkeypatch):
    drawn = iter(["-starts-with-minus", "_fine-token"])
    monkeypatch.setattr(security.secrets, "token_urlsafe", lambda nbytes: next(drawn))
    assert security.new_token(16) == "_fine-token"
