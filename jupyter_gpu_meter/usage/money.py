"""Money's words: the one parser, the one rounding and the one formatter. Pure.

Amounts are ``Decimal`` everywhere. The API and the CSV give them exact
(:func:`decimal_string`, 6 places); people see them rounded half up to the
currency's minor unit (:func:`format_money`: ``12.35 USD``, ``1,235 JPY``,
``0.125 KWD``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation

#: decimal places a price or amount may have; the ledger stores them with exactly this many
MONEY_PLACES = 6
#: amounts must be below this (the ledger stores them as NUMERIC(18, 6))
MONEY_LIMIT = Decimal(10) ** (18 - MONEY_PLACES)
_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
#: the precision of Python's default context, whatever the caller's is
_CONTEXT = Context(prec=28, rounding=ROUND_HALF_UP)

#: ISO 4217 currencies whose minor unit is not 1/100
_MINOR_UNITS = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
}


def parse_money(value, what: str = "amount", *, positive: bool = False) -> Decimal:
    """A price or amount as ``Decimal``: not negative (with `positive`, above 0), below
    :data:`MONEY_LIMIT`, at most :data:`MONEY_PLACES` decimal places.

    From a str, int, Decimal or float; floats go through ``str`` (``2.49`` is
    ``Decimal('2.49')``, not the binary approximation). Raises ValueError
    naming `what` and what is allowed.
    """
    least = "a positive" if positive else "a non-negative"
    hint = f"use {least} number with at most {MONEY_PLACES} decimal places, e.g. 2.49 or 50"
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"{what} {value!r} is not a number: {hint}")
    try:
        amount = Decimal(str(value).strip()) if isinstance(value, (str, float)) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{what} {value!r} is not a number: {hint}") from None
    if not amount.is_finite():
        raise ValueError(f"{what} {value!r} is not a number: {hint}")
    if amount < 0 or (positive and amount == 0):
        raise ValueError(f"{what} {value!r} is not allowed: {hint}")
    if amount >= MONEY_LIMIT:
        raise ValueError(f"{what} {value!r} is too large: it must be below {MONEY_LIMIT:,}")
    if amount != amount.quantize(_QUANTUM, context=_CONTEXT):
        raise ValueError(f"{what} {value!r} has more than {MONEY_PLACES} decimal places: {hint}")
    return amount.copy_abs()  # -0 -> 0, exact whatever the context


def minor_unit(currency: str) -> int:
    """Decimal places of `currency`'s minor unit: 2 for USD, 0 for JPY, 3 for KWD."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def _half_up(value: Decimal, places: int) -> Decimal:
    return Decimal(value).quantize(Decimal(1).scaleb(-places), context=_CONTEXT)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half up to `currency`'s minor unit: what people and invoices see."""
    return _half_up(amount, minor_unit(currency))


def format_money(
    amount: Decimal,
    currency: str,
    *,
    code: bool = True,
    grouping: bool = True,
    exact: bool = False,
) -> str:
    """Money for people: ``1,234.57 USD``, ``1,235 JPY``, ``0.125 KWD``.

    Rounded half up to the currency's minor unit; with `exact`, not rounded:
    at least the minor unit's places, more where the amount has them (a price:
    ``0.0125 USD``). Without `code`, the number alone; without `grouping`, no
    thousands separators (``1234.57``: what a CSV or JSON report holds).
    """
    amount = Decimal(amount)
    if exact:
        places = max(minor_unit(currency), -amount.normalize(_CONTEXT).as_tuple().exponent)
        shown = _half_up(amount, places)
    else:
        shown = round_money(amount, currency)
    text = f"{shown:,}" if grouping else str(shown)
    return f"{text} {currency}" if code else text


def format_amount(
    amount: Decimal, unit: str, *, code: bool = True, places: int = 2, grouping: bool = True
) -> str:
    """An amount of money or of another unit (a budget's): `unit` an ISO 4217 code is
    money (:func:`format_money`: ``12.35 USD``), anything else a quantity to
    `places` (:func:`format_quantity`: ``1.50 GPU-hours``). Without `code`, no unit."""
    if re.fullmatch(r"[A-Z]{3}", unit):
        return format_money(amount, unit, code=code, grouping=grouping)
    text = format_quantity(amount, places, grouping=grouping)
    return f"{text} {unit}" if code else text


def format_rate(amount: Decimal, currency: str, per: str = "hour") -> str:
    """A price for people: ``2.49 USD/hour``, ``0.0125 USD/hour``; ``no charge`` for 0.

    At least the currency's minor unit of places, more only where the price has them.
    """
    if not Decimal(amount):
        return "no charge"
    return f"{format_money(amount, currency, exact=True)}/{per}"


def format_charges(charges: Mapping[str, Decimal], currency: str) -> str:
    """Charges in several currencies, ``12.35 USD + 1.00 EUR`` (by currency);
    ``0.00 <currency>`` when there are none."""
    if not charges:
        return format_money(Decimal(0), currency)
    return " + ".join(format_money(amount, code) for code, amount in sorted(charges.items()))


def decimal_string(value: Decimal, places: int = MONEY_PLACES) -> str:
    """`value` rounded half up to `places` (6: exact for the API and the CSV), as a
    string without separators: ``"1.234500"``."""
    return format_quantity(value, places, grouping=False)


def format_quantity(value: Decimal, places: int = 2, *, grouping: bool = True) -> str:
    """GPU-hours, GB-hours and the like for people: ``1,234.57`` (half up to `places`)."""
    rounded = _half_up(value, places)
    return f"{rounded:,}" if grouping else str(rounded)


def money(amount: Decimal, currency: str) -> dict:
    """A money object of the API: ``{"amount": "0.123457", "currency": "USD", "text":
    "0.12 USD"}``, the exact charge to 6 places and what the pages show of it."""
    return {
        "amount": decimal_string(amount),
        "currency": currency,
        "text": format_money(amount, currency),
    }


def charges_list(charges: Mapping[str, Decimal]) -> list[dict]:
    """Charges per currency as a list of money objects, by currency."""
    return [money(amount, currency) for currency, amount in sorted(charges.items())]
