"""The spawner's budget check: does what is left of a user's budget pay for a start?

A start is priced the way the bill will price it: its first
``c.Budgets.minimum_start`` seconds (at least one), at the price snapshot the
container will carry, through :func:`jupyter_gpu_meter.budgets.spent` (which
charges money with :func:`jupyter_gpu_meter.pricing.charge`: billing
increment and minimum charge included). The functions up to
:func:`budget_left` are pure; :func:`read_budget_status` reads the ledger
(blocking: the spawner runs it on its own executor), through one
:class:`~jupyter_gpu_meter.ledger.Ledger` per database for the whole hub
process, whose schema revision is checked once.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.engine import make_url

from .budgets import MONEY, BudgetStatus, hourly_usage, spent
from .ledger import Ledger
from .pricing import PriceSnapshot, billable_seconds
from .usage import format_amount, format_day, format_duration


@dataclass(frozen=True)
class _Start:
    """A session as :func:`~jupyter_gpu_meter.budgets.spent` reads one: a start priced ahead."""

    user: str
    price: PriceSnapshot
    started_at: datetime
    ended_at: datetime


def start_cost(
    status: BudgetStatus, price: PriceSnapshot, seconds: int, *, now: datetime
) -> Decimal | None:
    """What the first `seconds` (at least 1) of a server at `price` use of the budget in
    `status`, as the budget will count them; None when such a server uses nothing of it
    (a free CPU-only server, a price in another currency, CPU only against GPU-hours)."""
    if not hourly_usage(status, price):
        return None
    start = _Start(status.user, price, now, now + timedelta(seconds=max(seconds, 1)))
    return spent([start], unit=status.unit, currency=status.currency, since=now, now=start.ended_at)


def _amount(value: Decimal, status: BudgetStatus) -> str:
    """`value` of the budget in `status` as shown: "0.06 USD", "1.00 GPU-hours"."""
    return format_amount(value, status.unit_label)


def refusal(
    status: BudgetStatus,
    price: PriceSnapshot,
    *,
    minimum_seconds: int,
    now: datetime,
    what: str,
) -> str | None:
    """Why the budget in `status` cannot start a server at `price` (`what`, e.g.
    "1 × NVIDIA L4"), with the balance; None when it pays for `minimum_seconds`.

    A server that uses nothing of the budget is never refused.
    """
    cost = start_cost(status, price, minimum_seconds, now=now)
    if cost is None or (not status.exhausted and cost <= status.remaining):
        return None
    billed = max(minimum_seconds, 1)
    if status.unit == MONEY:  # billed in whole increments
        billed = billable_seconds(now, now + timedelta(seconds=billed), price.billing_increment_s)
    return (
        f"your budget ({status.scope} {status.name}) has {_amount(status.remaining, status)} "
        f"left this period: not enough to start {what}, whose first "
        f"{format_duration(timedelta(seconds=billed))} costs {_amount(cost, status)}"
    )


def budget_left(status: BudgetStatus | None) -> str | None:
    """The spawn form's "12.50 of 50.00 USD (since Nov 1, UTC)"; None without a budget."""
    if status is None:
        return None
    return (
        f"{format_amount(status.remaining, status.unit_label, code=False)} of "
        f"{_amount(status.limit, status)} (since {format_day(status.period_start)}, UTC)"
    )


# --- the ledger, read from the hub process ----------------------------------------

_ledgers: dict[str, Ledger] = {}
#: guards _ledgers: the spawner's executor threads open ledgers
_ledgers_lock = threading.Lock()


def shared_ledger(url: str) -> Ledger | None:
    """The hub process's one :class:`Ledger` of `url`, its schema checked when first
    opened (blocking); None while a SQLite ledger does not exist (no meter has run yet).

    Raises :class:`~jupyter_gpu_meter.ledger.LedgerSchemaError` (and tries again
    next time) when the schema is not this code's.
    """
    with _ledgers_lock:
        if url in _ledgers:
            return _ledgers[url]
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not os.path.exists(parsed.database or ""):
            return None  # no meter has made it yet: no budgets either
        ledger = Ledger(url)
        try:
            ledger.check_revision()
        except Exception:
            ledger.close()
            raise
        _ledgers[url] = ledger
        return ledger


@atexit.register
def close_ledgers() -> None:
    """Close the shared ledgers' connections (at exit)."""
    with _ledgers_lock:
        for ledger in _ledgers.values():
            ledger.close()
        _ledgers.clear()


def read_budget_status(url: str, user: str, groups: list[str], now: datetime):
    """`user`'s :class:`~jupyter_gpu_meter.budgets.BudgetStatus` from the ledger at
    `url` (blocking); None without a budget or a ledger."""
    ledger = shared_ledger(url)
    if ledger is None:
        return None
    return ledger.user_budget_status(user, groups, now)
