"""MoneyField: the one form field for amounts typed by admins (tiers, coupons, courses,
refunds), read by Money.parse_major in the field's currency."""

from __future__ import annotations

import pytest
from flask_babel import force_locale
from flask_wtf import FlaskForm
from werkzeug.datastructures import MultiDict
from wtforms.validators import DataRequired, Optional

from core.forms import MoneyField
from core.money import Money


class PriceForm(FlaskForm):
    class Meta:
        csrf = False

    price = MoneyField("Price", validators=[DataRequired()])
    renewal = MoneyField("Renewal", validators=[Optional()])
    minimum = MoneyField("Minimum", default="0")


def _validated(app, currency: str, locale: str = "en", **typed: str) -> PriceForm:
    with app.test_request_context(method="POST"), force_locale(locale):
        form = PriceForm(formdata=MultiDict(typed))
        form.price.currency = form.renewal.currency = form.minimum.currency = currency
        form.validate()
        # The errors are read here, in the locale the page would be written in.
        form.rendered_errors = {
            name: [str(e) for e in errors] for name, errors in form.errors.items()
        }
    return form


def test_amounts_are_read_in_the_fields_currency(app):
    form = _validated(app, "CNY", price=" 99.5 ", renewal="", minimum="")
    assert form.errors == {}
    assert form.price.money == Money(9950, "CNY")
    assert form.price.data == "99.5"
    assert form.renewal.money is None  # optional and empty: no amount
    assert form.minimum.money == Money(0, "CNY")  # empty without Optional: zero


def test_a_yen_amount_has_no_minor_digits(app):
    assert _validated(app, "JPY", price="1000").price.money == Money(1000, "JPY")
    form = _validated(app, "JPY", price="1000.5")
    assert form.price.money is None
    assert form.rendered_errors == {"price": ["Enter an amount like 99"]}


@pytest.mark.parametrize(
    ("locale", "message"),
    [("en", "Enter an amount like 99.00"), ("zh_CN", "金额格式不正确，例如 99.00")],
)
def test_a_bad_amount_is_refused_in_the_readers_language(app, locale, message):
    form = _validated(app, "CNY", locale, price="9.999", renewal="abc")
    assert form.rendered_errors == {"price": [message], "renewal": [message]}
    assert form.price.money is None and form.renewal.money is None
    assert form.price.data == "9.999"  # shown again as typed


def test_a_required_amount_left_empty_says_so_once(app):
    form = _validated(app, "CNY", price="")
    assert list(form.errors) == ["price"] and len(form.errors["price"]) == 1
    assert form.price.money is None


def test_the_view_must_say_the_currency(app):
    with app.test_request_context(method="POST"):
        form = PriceForm(formdata=MultiDict({"price": "9"}))
        with pytest.raises(RuntimeError, match="currency"):
            form.validate()
