"""Admin pages for money: orders, payment attempts, refunds, the webhook inbox and
reconciliation with the providers' statements."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired, FileSize
from sqlalchemy.orm import joinedload
from wtforms import BooleanField, HiddenField, RadioField, SelectChoice, StringField
from wtforms.validators import DataRequired, InputRequired, Length, Regexp

from core.auth import requires
from core.clock import utcnow
from core.db import db
from core.forms import MoneyField
from payments.exports import major
from payments.models import (
    Order,
    OrderFlag,
    Payment,
    PaymentStatus,
    Reconciliation,
    RefundStatus,
    WebhookEvent,
)
from payments.reconciliation import READERS, StatementError, reconcile
from payments.services import (
    PaymentError,
    request_refund,
    resolve_flag,
    send_refund,
    surplus_payments,
)

bp = Blueprint("payments_admin", __name__, url_prefix="/admin/payments")

PAGE_SIZE = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


def _page() -> int:
    return max(request.args.get("page", 1, type=int), 1)


@bp.get("/orders")
@requires("payments.view")
def orders():
    rows = db.paginate(sa.select(Order).order_by(Order.id.desc()), page=_page(), per_page=PAGE_SIZE)
    return render_template("admin/orders.html", page=rows)


@bp.get("/payments")
@requires("payments.view")
def payments():
    rows = db.paginate(
        sa.select(Payment).order_by(Payment.id.desc()), page=_page(), per_page=PAGE_SIZE
    )
    return render_template("admin/payments.html", page=rows)


@bp.get("/inbox")
@requires("payments.view")
def inbox():
    rows = db.paginate(
        sa.select(WebhookEvent).order_by(WebhookEvent.id.desc()), page=_page(), per_page=PAGE_SIZE
    )
    return render_template("admin/inbox.html", page=rows)


class RefundForm(FlaskForm):
    amount = MoneyField("退款金额 · Amount", validators=[DataRequired("必填 · Required")])
    reason = StringField(
        "原因 · Reason", validators=[DataRequired("必填 · Required"), Length(max=200)]
    )
    revoke_access = BooleanField(
        "同时取消入群资格（部分退款时）· Also end access (for a partial refund)"
    )


@bp.route("/payments/<int:payment_id>/refund", methods=["GET", "POST"])
@requires("payments.refund")
def refund(payment_id: int):
    """Refund some or all of a confirmed payment through its provider. A full refund
    always ends the access it paid for; a partial one only when asked."""
    payment = db.session.get(Payment, payment_id)
    if payment is None:
        abort(404)
    form = RefundForm()
    form.amount.currency = payment.currency
    if request.method == "GET":
        form.amount.data = payment.kept().major_str()
    if payment.status is PaymentStatus.CONFIRMED and form.validate_on_submit():
        try:
            refund = request_refund(
                payment,
                form.amount.money,
                reason=form.reason.data,
                revoke_access=form.revoke_access.data,
                actor=current_user.actor,
            )
        except PaymentError as refusal:
            db.session.rollback()
            form.amount.errors.append(str(refusal))
        else:
            refund = send_refund(refund, actor=current_user.actor)
            if refund.status is RefundStatus.FAILED:
                flash(f"退款失败 · Refund failed: {refund.failure_reason}", "error")
            elif refund.status is RefundStatus.SUCCEEDED:
                flash(f"已退款 {refund.money} · Refunded", "ok")
            else:
                flash(
                    f"已提交退款 {refund.money}，等待渠道确认 · Refund sent, awaiting the provider",
                    "ok",
                )
            return redirect(url_for(".refund", payment_id=payment.id))
    return render_template(
        "admin/refund.html",
        payment=payment,
        form=form,
        surplus=payment in surplus_payments(payment.order),
        flags=db.session.scalars(
            sa.select(OrderFlag).where(
                OrderFlag.order_id == payment.order_id, OrderFlag.resolved_at.is_(None)
            )
        ).all(),
    )


class ResolveForm(FlaskForm):
    flag = HiddenField(validators=[DataRequired(), Regexp(r"^\d{1,18}$")])


@bp.route("/attention", methods=["GET", "POST"])
@requires("payments.refund")
def attention():
    """Orders whose money needs a person: paid twice, bought twice, a second transaction,
    a renewal of an ended membership, a coupon paid for past its limit. Each links to the
    payment to refund; marking one dealt with keeps it in the audit log."""
    form = ResolveForm()
    if form.validate_on_submit():
        flag = db.session.get(OrderFlag, int(form.flag.data))
        if flag is None:
            abort(404)
        if resolve_flag(flag, actor=current_user.actor):
            flash("已标记为已处理 · Marked as dealt with", "ok")
        db.session.commit()
        return redirect(url_for(".attention"))
    rows = db.paginate(
        sa.select(OrderFlag)
        .where(OrderFlag.resolved_at.is_(None))
        .order_by(OrderFlag.id.desc())
        .options(joinedload(OrderFlag.order), joinedload(OrderFlag.payment)),
        page=_page(),
        per_page=PAGE_SIZE,
    )
    return render_template("admin/attention.html", page=rows, form=form)


class StatementForm(FlaskForm):
    provider = RadioField(
        "渠道 · Provider",
        choices=[
            SelectChoice("wechatpay", "微信支付对账单 · WeChat Pay daily bill"),
            SelectChoice("stripe", "Stripe 余额明细报表 · Stripe itemized balance report"),
        ],
        default="wechatpay",
        validators=[InputRequired("必填 · Required")],
    )
    statement = FileField(
        "对账文件 · Statement",
        validators=[
            FileRequired("请选择文件 · Choose a file"),
            FileAllowed(["csv", "txt"], "仅限CSV或TXT · CSV or TXT only"),
            FileSize(20 * 1024 * 1024, message="文件太大 · Too large"),
        ],
    )


@bp.route("/reconcile", methods=["GET", "POST"])
@requires("finance.export")
def reconcile_page():
    """Upload a provider's statement: what is missing on either side or differs, a line
    per day, and the fees recorded."""
    form = StatementForm()
    report = None
    if form.validate_on_submit():
        upload = form.statement.data
        try:
            lines = READERS[form.provider.data](upload.read().decode("utf-8-sig"))
        except UnicodeDecodeError:
            form.statement.errors.append("不是UTF-8文本 · Not UTF-8 text")
        except StatementError as error:
            form.statement.errors.append(str(error))
        else:
            report = reconcile(
                form.provider.data,
                lines,
                filename=upload.filename or "",
                actor=current_user.actor,
                now=utcnow(),
            )
            db.session.commit()
    history = db.session.scalars(
        sa.select(Reconciliation).order_by(Reconciliation.id.desc()).limit(20)
    ).all()
    return render_template(
        "admin/reconcile.html", form=form, report=report, history=history, major=major
    ), 422 if form.errors else 200
