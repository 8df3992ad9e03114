"""Money is integer minor units with a currency; typed amounts are read exactly."""

from __future__ import annotations

import pytest

from core.money import CurrencyMismatch, Money


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


def test_display():
    assert str(Money(9900, "CNY")) == "¥99.00"
    assert str(Money(5, "CNY")) == "¥0.05"
    assert str(Money(-900, "CNY")) == "-¥9.00"
    assert str(Money(1000, "JPY")) == "¥1000"
    assert Money(123456, "USD").major_str() == "1234.56"


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
