"""Admin pages for money: orders, payment attempts, refunds and the webhook inbox."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import BooleanField, StringField
from wtforms.validators import DataRequired, Length

from core.auth import requires
from core.db import db
from core.money import Money
from payments.models import Order, Payment, PaymentStatus, RefundStatus, WebhookEvent
from payments.services import PaymentError, request_refund, send_refund

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
    amount = StringField("退款金额 · Amount", validators=[DataRequired("必填 · Required")])
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
    if request.method == "GET":
        form.amount.data = payment.kept().major_str()
    if payment.status is PaymentStatus.CONFIRMED and form.validate_on_submit():
        try:
            amount = Money.parse_major(form.amount.data, payment.currency)
            refund = request_refund(
                payment,
                amount,
                reason=form.reason.data,
                revoke_access=form.revoke_access.data,
                actor=current_user.actor,
            )
        except ValueError:
            form.amount.errors.append("金额格式不正确，例如 99.00 · Enter an amount like 99.00")
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
    return render_template("admin/refund.html", payment=payment, form=form)
