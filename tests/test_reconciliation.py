"""Reconciliation: WeChat Pay's bill and Stripe's balance report matched against the ledger
(missing on either side, amounts and fees that differ, a line per day), fees recorded once,
bad files refused with nothing recorded."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from membership.models import Tier
from payments.models import LedgerEntry, Payment, Reconciliation
from payments.services import confirm_payment
from tests.helpers import count, csrf_token, open_payment, refund_in_full

BEIJING = ZoneInfo("Asia/Shanghai")
WECHAT_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)


def paid(app, provider: str, reference: str, *, person: int) -> int:
    """A confirmed payment of ¥99 at ``provider``, known there as ``reference``."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payment = open_payment(tier, provider, person)
        db.session.flush()
        confirm_payment(payment, reference, actor="test", now=utcnow())
        db.session.commit()
        return payment.id


def wechat_line(transaction: str, *, amount: str = "99.00", fee: str = "0.59", refund=None) -> str:
    """One line of a WeChat Pay bill, every field behind a backtick as WeChat writes it."""
    when = utcnow().astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    refund_id, refund_amount = refund or ("0", "0.00")
    status = "REFUND" if refund else "SUCCESS"
    cells = [
        when, "wx0123456789abcdef", "1900000109", "0", "", transaction, "out_no", "oUser",
        "NATIVE", status, "CMB_CREDIT", "CNY", amount, "0.00", refund_id, "r_no", refund_amount,
        "0.00", "ORIGINAL" if refund else "", "SUCCESS" if refund else "", "群门", "", fee,
        "0.60%", amount, refund_amount, "",
    ]  # fmt: skip
    return ",".join(f"`{cell}" for cell in cells)


def wechat_bill(*lines: str) -> str:
    totals = (
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,"
        "申请退款总金额"
    )
    return "\r\n".join(
        [WECHAT_HEADER, *lines, totals, "`3,`297.00,`0.00,`0.00,`1.77,`297.00,`0.00"]
    )


def upload(client, provider: str, text: str, filename: str = "bill.txt"):
    url = "/admin/payments/reconcile"
    return client.post(
        url,
        data={
            "csrf_token": csrf_token(client, url),
            "provider": provider,
            "statement": (io.BytesIO(text.encode()), filename),
        },
        content_type="multipart/form-data",
    )


def fees(app) -> list[tuple[str, int]]:
    with app.app_context():
        return db.session.execute(
            sa.select(LedgerEntry.provider_transaction_id, LedgerEntry.amount)
            .where(LedgerEntry.kind == "fee")
            .order_by(LedgerEntry.id)
        ).all()


def test_a_wechat_bill_shows_what_is_missing_or_differs_and_records_fees(app, demo, logged_in):
    paid(app, "wechatpay", "4200000001", person=1)
    paid(app, "wechatpay", "4200000002", person=2)
    paid(app, "wechatpay", "4200000003", person=3)
    bill = wechat_bill(
        wechat_line("4200000001"),
        wechat_line("4200000002", amount="98.00"),
        wechat_line("4200009999"),
    )
    response = upload(logged_in, "wechatpay", bill)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    today = utcnow().astimezone(BEIJING).date()
    assert f"<td>{today}</td><td>3</td><td>3</td><td>2</td>" in page  # theirs, ours, matched
    assert "<td>1</td><td>1</td><td>1</td>" in page  # missing ours, missing theirs, differ
    assert "4200009999" in page and "我方缺失" in page
    assert "4200000003" in page and "对方缺失" in page
    assert "金额不符" in page
    assert fees(app) == [("4200000001", -59)]  # not for the line whose amount differs
    with app.app_context():
        record = db.session.scalar(sa.select(Reconciliation))
        assert (record.lines, record.matched, record.problems, record.fees_recorded) == (3, 2, 3, 1)

    again = upload(logged_in, "wechatpay", bill).get_data(as_text=True)
    assert "手续费不符" not in again
    assert fees(app) == [("4200000001", -59)]  # recorded once

    changed = wechat_bill(wechat_line("4200000001", fee="0.60"))
    assert "手续费不符" in upload(logged_in, "wechatpay", changed).get_data(as_text=True)
    assert fees(app) == [("4200000001", -59)]  # compared, never changed


def test_fees_are_rows_of_the_revenue_export_and_the_totals_are_net(app, demo, logged_in):
    paid(app, "wechatpay", "4200000001", person=1)
    upload(logged_in, "wechatpay", wechat_bill(wechat_line("4200000001")))
    with app.app_context():
        community_id = db.session.scalar(sa.select(Tier.community_id))
    today = utcnow().astimezone(BEIJING).date()
    span = {"first_day": str(today - timedelta(days=1)), "last_day": str(today + timedelta(days=1))}
    url = f"/admin/communities/{community_id}/export"
    rows = list(
        csv.reader(io.StringIO(logged_in.get(url, query_string=span).text.lstrip("\ufeff")))
    )
    header = rows[0]
    by_kind = {r[1]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    assert by_kind["渠道手续费"]["收款"] == "0.00"
    assert by_kind["渠道手续费"]["手续费"] == "0.59"
    assert by_kind["渠道手续费"]["净额"] == "-0.59"
    assert by_kind["收款"]["净额"] == "99.00"
    totals = list(csv.reader(io.StringIO(
        logged_in.get(url, query_string={**span, "sheet": "totals"}).text.lstrip("\ufeff")
    )))  # fmt: skip
    assert totals[1][3:] == ["CNY", "98.41"]
    assert sum(Decimal(r[header.index("净额")]) for r in rows[1:]) == Decimal("98.41")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "不是微信支付对账单"),
        (WECHAT_HEADER.replace("手续费,", "") + "\n", "缺少列"),
        ("WECHAT_LINE_BAD_AMOUNT", "金额格式不正确"),
        ("WECHAT_LINE_BAD_TIME", "时间有误"),
        (WECHAT_HEADER + "\n`2026-11-25 10:00:00,`wx", "不完整"),
    ],
)
def test_a_file_that_is_not_a_readable_bill_is_refused_and_nothing_recorded(
    app, demo, logged_in, text, message
):
    paid(app, "wechatpay", "4200000001", person=1)
    if text == "WECHAT_LINE_BAD_AMOUNT":
        text = wechat_bill(wechat_line("4200000001", amount="99.999"))
    elif text == "WECHAT_LINE_BAD_TIME":
        text = wechat_bill(wechat_line("4200000001").replace("`20", "`tomorrow 20", 1))
    response = upload(logged_in, "wechatpay", text)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert count(Reconciliation) == 0
    assert fees(app) == []


def test_a_stripe_report_matches_charges_and_refunds(app, demo, logged_in, apis):
    payment_id = paid(app, "stripe", "pi_test_0001", person=1)
    with app.app_context():
        refund_in_full(db.session.get(Payment, payment_id), revoke_access=True)
        refund_reference = db.session.scalar(
            sa.select(LedgerEntry.provider_transaction_id).where(LedgerEntry.kind == "refund")
        )
    when = utcnow().strftime("%Y-%m-%d %H:%M:%S")
    report = "\n".join(
        [
            "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
            "source_id,charge_id,payment_intent_id",
            f"txn_1,{when},cny,99.00,3.17,95.83,charge,ch_1,ch_1,pi_test_0001",
            f"txn_2,{when},cny,-99.00,0.00,-99.00,refund,{refund_reference},ch_1,pi_test_0001",
            f"txn_3,{when},cny,-500.00,0.00,-500.00,payout,po_1,,",
        ]
    )
    response = upload(logged_in, "stripe", report, "report.csv")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "全部相符" in page
    assert fees(app) == [("pi_test_0001", -317)]


def test_the_cli_downloads_the_wechat_bill_through_wechatpy(app, demo, apis, runner):
    paid(app, "wechatpay", "4200000001", person=1)
    day = utcnow().astimezone(BEIJING).date()
    apis.wechat_bills[day.strftime("%Y%m%d")] = wechat_bill(wechat_line("4200000001"))
    result = runner.invoke(args=["payments", "reconcile", "wechatpay", "--day", str(day)])
    assert result.exit_code == 0, result.output
    assert f"{day}\t1\t1\t1\t0\t0\t0" in result.output  # theirs, ours, matched …
    assert "已记录手续费：1" in result.output
    assert apis.last("/pay/downloadbill").data["bill_type"] == "ALL"
    missing = runner.invoke(
        args=["payments", "reconcile", "wechatpay", "--day", str(day - timedelta(days=1))]
    )
    assert missing.exit_code == 1
    assert "No Bill Exist" in missing.output
