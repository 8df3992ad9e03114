"""Admin pages for money: orders, payment attempts and the webhook inbox."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, render_template, request
from flask_login import login_required

from core.db import db
from payments.models import Order, Payment, WebhookEvent

bp = Blueprint("payments_admin", __name__, url_prefix="/admin/payments")

PAGE_SIZE = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


def _page() -> int:
    return max(request.args.get("page", 1, type=int), 1)


@bp.get("/orders")
def orders():
    rows = db.paginate(sa.select(Order).order_by(Order.id.desc()), page=_page(), per_page=PAGE_SIZE)
    return render_template("admin/orders.html", page=rows)


@bp.get("/payments")
def payments():
    rows = db.paginate(
        sa.select(Payment).order_by(Payment.id.desc()), page=_page(), per_page=PAGE_SIZE
    )
    return render_template("admin/payments.html", page=rows)


@bp.get("/inbox")
def inbox():
    rows = db.paginate(
        sa.select(WebhookEvent).order_by(WebhookEvent.id.desc()), page=_page(), per_page=PAGE_SIZE
    )
    return render_template("admin/inbox.html", page=rows)
