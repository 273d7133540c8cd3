"""Budget rules: which budget applies to a user, and how much of it is spent. Pure.

See :mod:`jupyter_gpu_meter.budgets` for what a budget is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Protocol

from ..pricing import PriceSnapshot, charge, from_charge_units, gpu_seconds, parse_currency
from ..usage import (
    clip,
    decimal_string,
    format_amount,
    format_day,
    month_start,
    parse_money,
)

USER = "user"
GROUP = "group"
#: who a budget belongs to
SCOPES = (USER, GROUP)

MONEY = "money"
GPU_HOURS = "gpu-hours"
#: what a budget counts
UNITS = (MONEY, GPU_HOURS)

MONTH = "month"
ROLLING = "rolling:"
#: the longest rolling window, in days
MAX_ROLLING_DAYS = 3660

SET = "set"
GRANT = "grant"
REMOVE = "remove"
#: the kinds of budget change the ledger records
CHANGES = (SET, GRANT, REMOVE)

_HOUR = Decimal(3600)


class Budget(Protocol):
    """What the functions here read of a budget (the ledger's ``BudgetRecord`` has it)."""

    scope: str
    name: str
    amount: Decimal
    unit: str
    currency: str | None
    period: str


class Change(Protocol):
    """What the functions here read of a budget change (the ledger's ``BudgetChange``)."""

    at: datetime
    scope: str
    name: str
    change: str
    amount: Decimal | None
    unit: str | None
    currency: str | None


class Session(Protocol):
    """What the functions here read of a session (the ledger's ``SessionRecord``)."""

    user: str
    price: PriceSnapshot
    started_at: datetime
    ended_at: datetime | None


class Storage(Protocol):
    """What the functions here read of a user's storage over the budget's period so far
    (the ledger's ``StorageSum``)."""

    user: str
    currency: str
    #: exact amount
    charge: Decimal


class Energy(Protocol):
    """What the functions here read of a user's energy over the budget's period so far
    (the ledger's ``EfficiencySum``)."""

    user: str
    currency: str
    #: the energy charge in :data:`~jupyter_gpu_meter.pricing.CHARGE_UNITS` parts
    energy_units: int


# --- validation ------------------------------------------------------------------


def parse_scope(value) -> str:
    """'user' or 'group'; raises ValueError saying so."""
    scope = value.strip().lower() if isinstance(value, str) else value
    if scope not in SCOPES:
        raise ValueError(f"budget scope {value!r} is not allowed: use 'user' or 'group'")
    return scope


def parse_unit(value) -> str:
    """'money' or 'gpu-hours'; raises ValueError saying so."""
    unit = value.strip().lower() if isinstance(value, str) else value
    if unit not in UNITS:
        raise ValueError(
            f"budget unit {value!r} is not allowed: use 'money' (an amount in a currency) "
            "or 'gpu-hours'"
        )
    return unit


def parse_period(value) -> str:
    """'month' or 'rolling:<days>' (1 to 3660 days), normalised; raises ValueError saying so."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text == MONTH:
        return MONTH
    match = re.fullmatch(r"rolling:\s*(\d+)", text)
    if match and 1 <= int(match.group(1)) <= MAX_ROLLING_DAYS:
        return f"{ROLLING}{int(match.group(1))}"
    raise ValueError(
        f"budget period {value!r} is not allowed: use 'month' (the calendar month in UTC) or "
        f"'rolling:<days>' for the last 1 to {MAX_ROLLING_DAYS} days, e.g. 'rolling:30'"
    )


#: a budget's or grant's amount: the usage core's one money parser (``positive=True``
#: for grants)
parse_amount = parse_money


def parse_currency_for(unit: str, currency) -> str | None:
    """The currency a budget in `unit` needs: an ISO 4217 code for money, None for GPU-hours."""
    if unit == MONEY:
        if currency is None or currency == "":
            raise ValueError(
                "a money budget needs a currency: give the one the hub charges in "
                "(Pricing.currency), e.g. 'USD'"
            )
        return parse_currency(currency)
    if currency:
        raise ValueError(
            f"a {unit} budget has no currency (got {currency!r}): leave the currency out"
        )
    return None


def budget_currency(unit, currency, hub_currency: str):
    """The currency a budget set with `unit` and `currency` gets: the one rule for the
    CLI, the API and the admin page.

    `currency` when given; left out (None or ""), a money budget is in the hub's
    currency (its ``Pricing.currency``) and a GPU-hour budget has none.
    :func:`parse_currency_for` then checks the result.
    """
    if currency is not None and currency != "":
        return currency
    money = isinstance(unit, str) and unit.strip().lower() == MONEY
    return hub_currency if money else None


def parse_name(value, scope: str) -> str:
    """A user or group name: not empty, at most 255 characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise ValueError(
            f"{scope} name {value!r} is not allowed: give the JupyterHub {scope} name, "
            "1 to 255 characters"
        )
    return value


# --- periods and limits --------------------------------------------------------------


def period_start(period: str, now: datetime) -> datetime:
    """Where the period containing `now` starts, UTC.

    ``"month"``: midnight UTC on the 1st of `now`'s month; ``"rolling:N"``:
    exactly N days before `now`.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now {now!r} is naive: pass a timezone-aware UTC time")
    period = parse_period(period)
    if period == MONTH:
        return month_start(now)
    return now.astimezone(timezone.utc) - timedelta(days=int(period[len(ROLLING) :]))


def unit_label(unit: str, currency: str | None) -> str:
    """How amounts of a budget are shown: its currency code, or "GPU-hours"."""
    return currency if unit == MONEY and currency else "GPU-hours"


def granted(
    budget: Budget, changes: Iterable[Change], *, now: datetime, user: str | None = None
) -> Decimal:
    """The grants that add to `budget` in the period containing `now`.

    Grants to the budget's owner and, with `user`, to that user themself, in
    the budget's unit and currency, made in [period start, now] and after the
    last removal of their owner's budget: a budget removed and set again
    starts without the old grants.
    """
    start = period_start(budget.period, now)
    owners = {(budget.scope, budget.name)}
    if user is not None:
        owners.add((USER, user))
    changes = sorted(changes, key=lambda change: change.at)
    removed: dict[tuple[str, str], datetime] = {}
    for change in changes:
        if change.change == REMOVE and change.at <= now:
            removed[(change.scope, change.name)] = change.at
    total = Decimal(0)
    for change in changes:
        owner = (change.scope, change.name)
        if (
            change.change == GRANT
            and owner in owners
            and start <= change.at <= now
            and (owner not in removed or change.at > removed[owner])
            and change.unit == budget.unit
            and change.currency == budget.currency
        ):
            total += change.amount
    return total


def spent(
    sessions: Iterable[Session],
    *,
    unit: str,
    currency: str | None,
    since: datetime,
    now: datetime,
    storage: Iterable[Storage] = (),
    energy: Iterable[Energy] = (),
) -> Decimal:
    """What `sessions` (and `storage` and `energy`) used in [since, now]: money in
    `currency`, or GPU-hours. Exact.

    Only the part of each session inside the window counts, charged at the
    price snapshot it started with (like ``jupyter-gpu-meter report --since``);
    running sessions count up to `now`. A money budget counts only sessions
    charged in its currency: amounts in another currency cannot be converted.
    `storage` and `energy` (already over [since, now]) count for money budgets
    only, in their currency; a GPU-hour budget counts GPU time alone.
    """
    total = Decimal(0)
    for session in sessions:
        span = clip(session, now=now, since=since, until=now)
        if span is None:
            continue
        if unit == MONEY:
            if session.price.currency == currency:
                total += charge(session.price, *span)
        else:
            total += gpu_seconds(session.price, *span) / _HOUR
    if unit == MONEY:
        total += sum((part.charge for part in storage if part.currency == currency), Decimal(0))
        units = sum(part.energy_units for part in energy if part.currency == currency)
        total += from_charge_units(units)
    return total


@dataclass(frozen=True)
class BudgetStatus:
    """A user's budget in the current period: the limit, what is spent, what is left."""

    #: the user it is about
    user: str
    #: where the budget comes from: ("user", the user) or ("group", a group of theirs)
    scope: str
    name: str
    unit: str
    #: ISO 4217 code for money budgets, None for GPU-hours
    currency: str | None
    period: str
    period_start: datetime
    #: the budget's amount per period
    amount: Decimal
    #: grants in this period, to the budget's owner and to the user
    granted: Decimal
    #: amount + granted
    limit: Decimal
    #: used in this period, exact (running sessions up to now)
    spent: Decimal
    #: limit - spent, never below 0
    remaining: Decimal
    #: spent / limit (1 for a limit of 0: nothing may be spent)
    fraction: Decimal

    @property
    def unit_label(self) -> str:
        """The currency code, or "GPU-hours"."""
        return unit_label(self.unit, self.currency)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


def budget_status(
    budget: Budget,
    changes: Iterable[Change],
    sessions: Iterable[Session],
    *,
    now: datetime,
    user: str | None = None,
    storage: Iterable[Storage] = (),
    energy: Iterable[Energy] = (),
) -> BudgetStatus:
    """Where `user` stands against `budget` at `now`.

    `user` defaults to the budget's name for a user budget; a group budget
    applies to each member, so say which. Only that user's sessions,
    `storage` and `energy` count (others' are ignored; storage and energy only
    for money).
    The limit is the budget's amount plus the grants made in the current
    period to the budget's owner and, for a group budget, to the user
    themself (in the budget's unit and currency).
    """
    if user is None:
        if budget.scope != USER:
            raise ValueError(
                f"group {budget.name!r}'s budget applies to each member: pass user=<member>"
            )
        user = budget.name
    start = period_start(budget.period, now)
    extra = granted(budget, changes, now=now, user=user)
    limit = budget.amount + extra
    used = spent(
        (session for session in sessions if session.user == user),
        unit=budget.unit,
        currency=budget.currency,
        since=start,
        now=now,
        storage=(part for part in storage if part.user == user),
        energy=(part for part in energy if part.user == user),
    )
    return BudgetStatus(
        user=user,
        scope=budget.scope,
        name=budget.name,
        unit=budget.unit,
        currency=budget.currency,
        period=budget.period,
        period_start=start,
        amount=budget.amount,
        granted=extra,
        limit=limit,
        spent=used,
        remaining=max(limit - used, Decimal(0)),
        fraction=used / limit if limit > 0 else Decimal(1),
    )


def effective_budget(user: str, groups: Iterable[str], budgets: Iterable[Budget]) -> Budget | None:
    """The budget that applies to `user`, a member of `groups`; None: no budget, no limit.

    The user's own budget if there is one; else the budget of their groups
    with the largest amount (the user gets the most generous of their groups).
    Amounts in different units or currencies cannot be compared: if their
    groups' budgets mix them, the group whose name sorts first applies (give
    such users a budget of their own). Equal amounts: the name sorting first.
    """
    groups = set(groups)
    candidates = []
    for budget in budgets:
        if budget.scope == USER and budget.name == user:
            return budget
        if budget.scope == GROUP and budget.name in groups:
            candidates.append(budget)
    if not candidates:
        return None
    candidates.sort(key=lambda budget: budget.name)
    if len({(budget.unit, budget.currency) for budget in candidates}) > 1:
        return candidates[0]
    return max(candidates, key=lambda budget: budget.amount)  # max keeps the first of ties


# --- what a start can afford ---------------------------------------------------------


def hourly_usage(status: BudgetStatus, price: PriceSnapshot) -> Decimal:
    """What one hour of a server at `price` uses of the budget in `status`.

    Money: the snapshot's hourly rate, if it is charged in the budget's
    currency (0 otherwise: it does not count against this budget). GPU-hours:
    the number of GPUs (0 for a CPU-only server).
    """
    if status.unit == MONEY:
        return price.hourly_rate if price.currency == status.currency else Decimal(0)
    return Decimal(price.gpus)


def spends_from(status: BudgetStatus, price: PriceSnapshot | None) -> bool:
    """Whether a server at `price` spends from the budget in `status`: the servers the
    budget policy stops. One without a price snapshot counts (not knowing never spares it)."""
    return price is None or hourly_usage(status, price) > 0


def budget_view(status: BudgetStatus | None, warn_fraction) -> dict | None:
    """What a page shows of a budget: left, of, period, and a warning near or past the end.

    ``left`` and ``of`` are money objects of the API (exact ``amount``, its
    ``currency`` or "GPU-hours", the ``text`` people see).
    """
    if status is None:
        return None
    unit = status.unit_label

    def amount(value):
        return {
            "amount": decimal_string(value),
            "currency": unit,
            "text": format_amount(value, unit),
        }

    view = {
        "left": amount(status.remaining),
        "of": amount(status.limit),
        "period": f"since {format_day(status.period_start)}, UTC",
        "fraction": decimal_string(status.fraction, 2),
        "warning": "",
    }
    if status.exhausted:
        view["warning"] = "Your budget is used up: running GPU servers will be stopped."
    elif status.fraction >= Decimal(str(warn_fraction)):
        view["warning"] = f"You have used {int(status.fraction * 100)}% of your budget."
    return view


# --- the settings both the spawner and the meter read ----------------------------
