"""Codes that lower an open order's price before it is paid (coupons).

Payments owns the order's side of a discount: the list price, what was taken off, the code,
the ledger's record of it, and an order a discount makes free. Which codes exist and who
may use them is decided by the rule the app registers with :func:`register_discount_rule`
(``perks.coupons``): payments imports nothing from the packages that sell, so the pages
that sell something ask here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask, current_app

from core import audit
from core.db import db
from core.limits import Limit, TooManyTries, claim
from core.money import Money
from core.security import new_token
from payments.models import Order, OrderStatus, Payment, PaymentStatus
from payments.services import PaymentError, confirm_payment

#: The provider name of the zero payment that settles an order a discount made free.
DISCOUNT_PROVIDER = "coupon"


@dataclass(frozen=True, slots=True)
class Purchase:
    """What a discount rule needs to know beyond the order (which carries its community
    and, when known, its member): what exactly is bought, and by whom."""

    #: ``tier:<id>`` or ``course:<id>``.
    product: str
    #: Whom per-person limits count: ``member:<id>``, or a prospect's normalised contact.
    buyer: str


class DiscountRefused(PaymentError):
    """The code does not apply to this order; the message says why, Chinese first."""


#: ``rule(order, code, purchase, now=)`` → the discount, or raises :class:`DiscountRefused`.
#: It records the use of the code (flushed) so that the use can be released or consumed.
DiscountRule = Callable[..., Money]

_RULE = "qunmen.discount_rule"
UNKNOWN_CODE = "优惠码不存在 · Unknown coupon code"
#: Codes one client (an IPv4 address or an IPv6 /64) may try in a window, right or wrong.
CODE_TRIES_PER_CLIENT = Limit("coupon-try:client", 10, timedelta(minutes=15))
#: Codes all clients together may try in a window: a guesser with many addresses meets it.
CODE_TRIES_IN_ALL = Limit("coupon-try:all", 1000, timedelta(minutes=15))
TOO_MANY_TRIES = (
    "优惠码尝试次数过多，请15分钟后再试 · Too many coupon codes tried: try again in 15 minutes"
)


def register_discount_rule(app: Flask, rule: DiscountRule) -> None:
    app.extensions[_RULE] = rule


def normalise_code(code: str) -> str:
    """Codes are read without surrounding space and in upper case: ``vip-9`` is ``VIP-9``."""
    return code.strip().upper()


def discount_order(
    order: Order, code: str, purchase: Purchase, *, actor: str, now: datetime
) -> Money:
    """Apply ``code`` to an open order that has no payment attempt yet (flushes).

    Returns the discount. Applying the code the order carries already changes nothing; a
    second, different code is refused (one per order). An order the discount makes free is
    settled at once by a zero payment, so whatever it buys is granted like any paid order.
    """
    code = normalise_code(code)
    if order.coupon_code == code:
        return order.discount
    if order.coupon_code is not None:
        raise DiscountRefused("每笔订单只能使用一张优惠券 · One coupon per order")
    if order.status is not OrderStatus.OPEN or order.expires_at <= now or order.payments:
        raise DiscountRefused(
            "订单已开始支付，不能再用优惠券 · This order is being paid: a coupon can no longer "
            "be applied"
        )
    rule = current_app.extensions.get(_RULE)
    if rule is None or not code:
        raise DiscountRefused(UNKNOWN_CODE)
    discount = rule(order, code, purchase, now=now)
    if not 0 < discount.amount <= order.list_amount or discount.currency != order.currency:
        raise DiscountRefused(UNKNOWN_CODE)
    order.amount = order.list_amount - discount.amount
    order.coupon_code = code
    audit.record(
        "order.discounted",
        order,
        actor=actor,
        data={"code": code, "discount": str(discount), "amount": str(order.price)},
        now=now,
    )
    if order.amount == 0:
        _settle_free_order(order, actor=actor, now=now)
    return discount


def claim_code_try(client: str, *, now: datetime) -> None:
    """Count one code typed by ``client`` against :data:`CODE_TRIES_PER_CLIENT` and
    :data:`CODE_TRIES_IN_ALL` (flushed), before :func:`discount_order` looks it up. The
    caller commits the claim before that, so parallel tries see each other and a refused
    code counts. Raises :class:`DiscountRefused` when a limit is reached: the code must not
    be looked up then (the claim is still committed: tries over a limit count too)."""
    try:
        claim([(CODE_TRIES_PER_CLIENT, client), (CODE_TRIES_IN_ALL, "install")], now=now)
    except TooManyTries as reached:
        raise DiscountRefused(TOO_MANY_TRIES) from reached


def _settle_free_order(order: Order, *, actor: str, now: datetime) -> None:
    """A zero payment, confirmed: "paid" stays derived from confirmed attempts and the
    ledger states the discount on its entry."""
    payment = Payment(
        public_id=new_token(16),
        order=order,
        provider=DISCOUNT_PROVIDER,
        method="none",
        amount=0,
        currency=order.currency,
        status=PaymentStatus.CREATED,
        return_url="",
        cancel_url="",
        provider_data={},
        created_at=now,
    )
    db.session.add(payment)
    db.session.flush()
    confirm_payment(payment, None, actor=actor, now=now)
