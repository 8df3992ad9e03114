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
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

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


@dataclass(frozen=True, slots=True)
class Sale:
    """What a discount rule reads of an order, which a price check has before any order
    exists: the community selling, the member buying (when known), the list price."""

    community_id: int
    member_id: int | None
    list_price: Money

    @classmethod
    def of(cls, order: Order) -> Sale:
        return cls(order.community_id, order.member_id, Money(order.list_amount, order.currency))


@dataclass(frozen=True, slots=True)
class PriceCheck:
    """The answer of :func:`check_price`: the price before the discount, what the code
    takes off (zero when it was refused or none was typed), and why it was refused."""

    list_price: Money
    discount: Money
    refusal: str | None = None

    @property
    def price(self) -> Money:
        return self.list_price - self.discount


class DiscountRefused(PaymentError):
    """The code does not apply to this order; the message says why, in the reader's
    language."""


#: ``rule(order, code, purchase, now=)`` → the discount, or raises :class:`DiscountRefused`.
#: It records the use of the code (flushed) so that the use can be released or consumed.
DiscountRule = Callable[..., Money]

_RULE = "qunmen.discount_rule"
UNKNOWN_CODE = _l("Unknown coupon code")
#: Codes one client (an IPv4 address or an IPv6 /64) may try in a window, right or wrong.
CODE_TRIES_PER_CLIENT = Limit("coupon-try:client", 10, timedelta(minutes=15))
#: Codes all clients together may try in a window: a guesser with many addresses meets it.
CODE_TRIES_IN_ALL = Limit("coupon-try:all", 1000, timedelta(minutes=15))
TOO_MANY_TRIES = _l("Too many coupon codes tried: try again in 15 minutes")


def register_discount_rule(app: Flask, rule: DiscountRule) -> None:
    app.extensions[_RULE] = rule


#: ``quote(sale, code, purchase, now=)`` → the discount the rule would give, or raises
#: :class:`DiscountRefused`, with the same checks as the rule and recording nothing.
DiscountQuote = Callable[..., Money]
_QUOTE = "qunmen.discount_quote"


def register_discount_quote(app: Flask, quote: DiscountQuote) -> None:
    """Called once at start-up with the read-only twin of the discount rule."""
    app.extensions[_QUOTE] = quote


def check_price(sale: Sale, code: str, purchase: Purchase, *, now: datetime) -> PriceCheck:
    """The price a payer would pay with ``code``, before they leave for the cashier ("check
    price" on the join form, a renewal, a course page): the discount the registered rule
    would give an order for ``sale`` made now, by the same checks. Creates nothing (no
    order, no reservation); the caller counts the try first (:func:`claim_code_try`). The
    order made afterwards computes its own discount: this is an estimate the payer reads,
    never what is charged. A refused code gives the undiscounted price and the refusal."""
    code = normalise_code(code)
    zero = Money(0, sale.list_price.currency)
    quote = current_app.extensions.get(_QUOTE)
    if not code:
        return PriceCheck(sale.list_price, zero)
    try:
        if quote is None:
            raise DiscountRefused(UNKNOWN_CODE)
        discount = quote(sale, code, purchase, now=now)
        if (
            not 0 < discount.amount <= sale.list_price.amount
            or discount.currency != sale.list_price.currency
        ):
            raise DiscountRefused(UNKNOWN_CODE)
    except DiscountRefused as refusal:
        return PriceCheck(sale.list_price, zero, str(refusal))
    return PriceCheck(sale.list_price, discount)


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
        raise DiscountRefused(_("One coupon per order"))
    if order.status is not OrderStatus.OPEN or order.expires_at <= now or order.payments:
        raise DiscountRefused(_("This order is being paid: a coupon can no longer be applied"))
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
        data={"code": code, "discount": discount.iso_str(), "amount": order.price.iso_str()},
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
