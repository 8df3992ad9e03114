"""Money is integer minor units with a currency; typed amounts are read exactly."""

from __future__ import annotations

import pytest
from flask_babel import force_locale

from core.money import CURRENCIES, AmountError, CurrencyMismatch, Money


@pytest.mark.parametrize(
    ("text", "currency", "amount"),
    [
        ("99", "CNY", 9900),
        ("99.5", "CNY", 9950),
        ("99.00", "CNY", 9900),
        ("0.01", "CNY", 1),
        (" 9 ", "CNY", 900),
        ("1000", "JPY", 1000),
        ("99.", "CNY", 9900),  # a trailing point, as some phone keyboards leave it
    ],
)
def test_parse_major(text, currency, amount):
    assert Money.parse_major(text, currency) == Money(amount, currency)


@pytest.mark.parametrize(
    "text", ["", "99.001", "-1", "+1", "1e3", "1,000", "¥99", "９９", ".5", "NaN", "1.0.0"]
)
def test_parse_major_refuses(text):
    with pytest.raises(ValueError):
        Money.parse_major(text, "CNY")


def test_display_outside_a_request_is_chinese():
    assert str(Money(9900, "CNY")) == "¥99.00"
    assert str(Money(5, "CNY")) == "¥0.05"
    assert str(Money(-900, "CNY")) == "-¥9.00"
    assert str(Money(1000, "JPY")) == "JP¥1,000"
    assert Money(123456, "USD").major_str() == "1234.56"


@pytest.mark.parametrize(
    ("money", "zh_cn", "en"),
    [
        (Money(9900, "CNY"), "¥99.00", "CN¥99.00"),
        (Money(100, "JPY"), "JP¥100", "¥100"),
        (Money(123456, "USD"), "US$1,234.56", "$1,234.56"),
        (Money(9900, "BHD"), "BHD9.900", "BHD9.900"),
        (Money(4000, "ISK"), "ISK40", "ISK40"),  # CLDR shows no minor digits for ISK …
        (Money(4010, "ISK"), "ISK40.10", "ISK40.10"),  # … but an amount is never rounded
        (Money(-1, "KWD"), "-KWD0.001", "-KWD0.001"),
    ],
)
def test_format_by_locale(money, zh_cn, en):
    assert money.format("zh_CN") == zh_cn
    assert money.format("en") == en


def test_str_follows_the_request(app):
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert str(Money(9900, "CNY")) == "CN¥99.00"
    with app.test_request_context(headers={"Accept-Language": "zh-CN"}):
        assert str(Money(9900, "CNY")) == "¥99.00"
    with app.test_request_context(), force_locale("en"):
        assert f"{Money(100, 'JPY')}" == "¥100"


def test_currencies_are_stripes_with_their_exponents():
    assert len(CURRENCIES) >= 135
    assert all(len(code) == 3 and code.isupper() for code in CURRENCIES)
    zero = [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
    assert {code for code, exponent in CURRENCIES.items() if exponent == 0} == set(zero)
    three = {code for code, exponent in CURRENCIES.items() if exponent == 3}
    assert three == {"BHD", "JOD", "KWD", "OMR", "TND"}
    assert CURRENCIES["ISK"] == CURRENCIES["HUF"] == CURRENCIES["TWD"] == CURRENCIES["CNY"] == 2


@pytest.mark.parametrize(
    ("text", "currency", "amount"),
    [("100", "JPY", 100), ("9.9", "BHD", 9900), ("9.125", "KWD", 9125), ("40", "ISK", 4000)],
)
def test_parse_major_uses_the_exponent(text, currency, amount):
    assert Money.parse_major(text, currency) == Money(amount, currency)


@pytest.mark.parametrize(("text", "currency"), [("100.5", "JPY"), ("9.1234", "BHD")])
def test_parse_major_refuses_more_digits_than_the_currency_has(text, currency):
    with pytest.raises(AmountError):
        Money.parse_major(text, currency)


def test_refusal_says_why_in_the_readers_language(app):
    with pytest.raises(AmountError) as refused:
        Money.parse_major("9.999", "CNY")
    assert isinstance(refused.value, ValueError)
    with app.test_request_context(), force_locale("en"):
        assert str(refused.value.message) == "Enter an amount like 99.00"
    with app.test_request_context(), force_locale("zh_CN"):
        assert str(refused.value.message) == "金额格式不正确，例如 99.00"
    with pytest.raises(AmountError) as refused:
        Money.parse_major("1.5", "JPY")
    with app.test_request_context(), force_locale("en"):
        assert str(refused.value.message) == "Enter an amount like 99"


def test_arithmetic_keeps_currency():
    assert Money(9900, "CNY") - Money(900, "CNY") == Money(9000, "CNY")
    with pytest.raises(CurrencyMismatch):
        Money(1, "CNY") + Money(1, "USD")


@pytest.mark.parametrize("amount", [1.5, "100", True])
def test_amount_must_be_an_int(amount):
    with pytest.raises(TypeError):
        Money(amount, "CNY")


def test_unknown_currency():
    with pytest.raises(ValueError):
        Money(1, "XXX")
