"""Money: an integer amount in minor units with its currency. Never a float.

Conversions to and from major units happen once, at the provider boundary and in display.
Display goes through Babel (CLDR) in the reader's locale; amounts typed by people are read
by :meth:`Money.parse_major` alone.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from babel import Locale
from babel.numbers import NumberPattern, get_currency_precision
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l

#: Every currency Stripe charges in (docs.stripe.com/currencies, "presentment
#: currencies"), by the exponent of its minor unit *in Stripe's API*, which is where our
#: amounts cross a provider's boundary. Where it differs from CLDR (Babel's
#: ``get_currency_precision``), Stripe's exponent is kept and display drops the digits CLDR
#: does not show when they are zero (:meth:`Money.format`): AFN ALL COP HUF IDR ISK LAK
#: LBP MMK SOS YER are two-decimal at Stripe, zero-decimal in CLDR. Stripe's special
#: cases: ISK charges must be whole krónur (multiples of 100), HUF and TWD payouts too;
#: UGX is zero-decimal at Stripe and in CLDR (ISO 4217 says 2).
_ZERO_DECIMAL = "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMAL = "BHD JOD KWD OMR TND"
_TWO_DECIMAL = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BWP BYN "
    "BZD CAD CDF CHF CNY COP CRC CVE CZK DKK DOP DZD EGP ETB EUR FJD FKP GBP GEL GIP GMD "
    "GTQ GYD HKD HNL HTG HUF IDR ILS INR ISK JMD KES KGS KHR KYD KZT LAK LBP LKR LRD LSL "
    "MAD MDL MKD MMK MNT MOP MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK "
    "PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SEK SGD SHP SLE SOS SRD SZL THB TJS TOP TRY "
    "TTD TWD TZS UAH USD UYU UZS WST XCD YER ZAR ZMW"
)
#: Minor-unit exponent of each currency we can sell in (see above).
CURRENCIES: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMAL.split(), 2),
    **dict.fromkeys(_ZERO_DECIMAL.split(), 0),
    **dict.fromkeys(_THREE_DECIMAL.split(), 3),
}
#: The locale money is shown in outside a request (the worker, the CLI).
DEFAULT_LOCALE = "zh_CN"


class CurrencyMismatch(ValueError):
    pass


class AmountError(ValueError):
    """Text typed as an amount that is not one in its currency. ``message`` says so in the
    reader's language (a lazy string: it is translated when shown)."""

    def __init__(self, text: str, currency: str) -> None:
        super().__init__(f"not an amount in {currency}: {text!r}")
        self.currency = currency
        example = Money(99 * 10 ** CURRENCIES[currency], currency).major_str()
        self.message = _l("Enter an amount like %(example)s", example=example)


@functools.lru_cache(maxsize=64)
def _currency_pattern(locale: Locale, digits: int) -> NumberPattern:
    """``locale``'s currency pattern, showing exactly ``digits`` minor digits."""
    pattern = copy.copy(locale.currency_formats["standard"])
    pattern.frac_prec = (digits, digits)
    return pattern


@functools.lru_cache(maxsize=4096)  # amounts repeat (prices), and CLDR formatting is slow
def _formatted(amount: int, currency: str, locale_name: str) -> str:
    """:meth:`Money.format`'s text."""
    exponent = CURRENCIES[currency]
    digits = min(exponent, get_currency_precision(currency))
    if amount % 10 ** (exponent - digits):
        digits = exponent
    locale = Locale.parse(locale_name)
    return _currency_pattern(locale, digits).apply(
        Decimal(amount).scaleb(-exponent), locale, currency=currency, currency_digits=False
    )


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
        exponent = CURRENCIES[self.currency]
        sign = "-" if self.amount < 0 else ""
        whole, minor = divmod(abs(self.amount), 10**exponent)
        return f"{sign}{whole}.{minor:0{exponent}d}" if exponent else f"{sign}{whole}"

    def iso_str(self) -> str:
        """The amount and its ISO 4217 code, the same for every reader: 9900 CNY → "99.00
        CNY". What records keep (audit entries): :meth:`format` is for a reader, and an
        entry written in one admin's language would read in it for every other."""
        return f"{self.major_str()} {self.currency}"

    def format(self, locale: str | Locale | None = None) -> str:
        """How a reader of ``locale`` (default: the request's, else zh_CN) reads it, by
        CLDR: 9900 CNY is "¥99.00" in zh_CN and "CN¥99.00" in en; 100 JPY is "JP¥100" in
        zh_CN. Exact: the digits CLDR shows for the currency, and any further minor digit
        that is not zero (an ISK amount of 4010 is "ISK40.10", of 4000 "ISK40")."""
        return _formatted(self.amount, self.currency, str(locale or get_locale() or DEFAULT_LOCALE))

    def __str__(self) -> str:
        """The amount as the request's reader reads it (:meth:`format`)."""
        return self.format()

    @classmethod
    def parse_major(cls, text: str, currency: str) -> Money:
        """The one reader of amounts typed by people, in major units ("99", "99.5",
        "99.00"), exactly.

        Raises :class:`AmountError` for anything else: more decimals than the currency
        has, signs, exponents, separators.
        """
        exponent = CURRENCIES[currency]
        pattern = r"(\d{1,12})" + (rf"(?:\.(\d{{0,{exponent}}}))?" if exponent else "")
        match = re.fullmatch(pattern, text.strip(), flags=re.ASCII)
        if match is None:
            raise AmountError(text, currency)
        minor = (match.group(2) or "") if exponent else ""
        return cls(
            int(match.group(1)) * 10**exponent + int(minor.ljust(exponent, "0") or 0), currency
        )
