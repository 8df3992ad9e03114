"""Money: an integer amount in minor units with its currency. Never a float.

Conversions to and from major units happen once, at the provider boundary and in display.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Minor-unit exponent and display symbol of the currencies we sell in.
CURRENCIES: dict[str, tuple[int, str]] = {
    "CNY": (2, "¥"),
    "USD": (2, "$"),
    "EUR": (2, "€"),
    "HKD": (2, "HK$"),
    "JPY": (0, "¥"),
}


class CurrencyMismatch(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Money:
    amount: int  #: minor units (fen, cents)
    currency: str  #: ISO 4217 code

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise TypeError(f"amount must be an int of minor units, not {self.amount!r}")
        if self.currency not in CURRENCIES:
            raise ValueError(f"unsupported currency {self.currency!r}")

    def __add__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def _check(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def percent(self, percent: int) -> Money:
        """``percent`` % of this amount in whole minor units, rounded down. The one rounding
        rule for discounts: a discount is never more than its percentage."""
        return Money(self.amount * percent // 100, self.currency)

    @property
    def is_zero(self) -> bool:
        return self.amount == 0

    def major_str(self) -> str:
        """The amount in major units as exact decimal text: 9900 CNY → "99.00"."""
        exponent = CURRENCIES[self.currency][0]
        sign = "-" if self.amount < 0 else ""
        whole, minor = divmod(abs(self.amount), 10**exponent)
        return f"{sign}{whole}.{minor:0{exponent}d}" if exponent else f"{sign}{whole}"

    def __str__(self) -> str:
        """How people read it: ``¥99.00``."""
        symbol = CURRENCIES[self.currency][1]
        text = self.major_str()
        return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"

    @classmethod
    def parse_major(cls, text: str, currency: str) -> Money:
        """Read an amount typed in major units ("99", "99.5", "99.00") exactly.

        Raises ValueError for anything else: more decimals than the currency has, signs,
        exponents, separators.
        """
        exponent = CURRENCIES[currency][0]
        pattern = r"(\d{1,12})" + (rf"(?:\.(\d{{0,{exponent}}}))?" if exponent else "")
        match = re.fullmatch(pattern, text.strip(), flags=re.ASCII)
        if match is None:
            raise ValueError(f"not an amount in {currency}: {text!r}")
        minor = (match.group(2) or "") if exponent else ""
        return cls(
            int(match.group(1)) * 10**exponent + int(minor.ljust(exponent, "0") or 0), currency
        )
