"""Provider-facing endpoints: the webhook inbox's door, and the fake provider's cashier."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request
from flask_wtf import FlaskForm
from wtforms import SubmitField

from core.clock import utcnow
from core.db import db
from core.security import csrf, new_token
from payments import inbox
from payments.models import InboxStatus, Payment, PaymentStatus
from payments.providers import Outcome, get_provider
from payments.providers.fake import FakeProvider

#: Notifications are small; anything larger is refused before it is read.
MAX_NOTIFICATION_BYTES = 1024 * 1024

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhooks/<provider_name>")
@csrf.exempt
def receive(provider_name: str):
    provider = get_provider(provider_name)
    if provider is None:
        abort(404)
    request.max_content_length = MAX_NOTIFICATION_BYTES
    result = inbox.receive(provider_name, request.get_data(cache=False), dict(request.headers))
    accepted = result.status in (InboxStatus.PROCESSED, InboxStatus.DUPLICATE)
    return provider.acknowledge(accepted, result.message, result.http_status)


fake_cashier = Blueprint("fake_cashier", __name__)


class CashierForm(FlaskForm):
    pay = SubmitField("确认支付 · Pay")
    fail = SubmitField("模拟失败 · Simulate a failure")
    cancel = SubmitField("取消支付 · Cancel")


@fake_cashier.route("/fake-pay/<payment_public_id>", methods=["GET", "POST"])
def cashier(payment_public_id: str):
    """The fake provider's payment page. Paying sends a signed notification to the inbox,
    as the provider's server would, then returns the payer to us."""
    provider = get_provider(FakeProvider.name)
    payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == payment_public_id))
    if provider is None or payment is None:
        abort(404)
    form = CashierForm()
    if payment.status is PaymentStatus.CREATED and form.validate_on_submit():
        outcome = (
            Outcome.SUCCEEDED
            if form.pay.data
            else Outcome.FAILED
            if form.fail.data
            else Outcome.CANCELLED
        )
        body, headers = provider.build_notification(
            payment,
            outcome,
            event_id=f"evt_{new_token(12)}",
            transaction_id=f"fake_{new_token(12)}",
            now=utcnow(),
        )
        result = inbox.receive(FakeProvider.name, body, headers)
        if result.http_status >= 500:
            flash("通知商户失败，请重试 · Could not notify the shop, please try again", "error")
        else:
            return redirect(
                payment.cancel_url if outcome is Outcome.CANCELLED else payment.return_url
            )
    return render_template("payments/fake_cashier.html", payment=payment, form=form)
