"""When the policies would stop a server, and when a budget runs out. Pure.

What ``api/server-status`` tells a notebook (JupyterLab's status bar) ahead
of a stop. Every deadline comes from the rule the policy itself applies
(:func:`~jupyter_gpu_meter.policies.idle_stop_at`,
:func:`~jupyter_gpu_meter.policies.max_age_stop_at`,
:func:`~jupyter_gpu_meter.policies.budget_stop_at`), never from a second
copy of it; a policy an admin replaced with their own callable has no
deadline here (its rule is theirs). The policy runner acts at its first
check after a deadline (``c.Policies.interval``), so a stop comes at most
that much later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from .budgets import BudgetStatus, hourly_usage, spends_from
from .policies import ServerState, budget_stop_at, idle_stop_at, max_age_stop_at
from .pricing import PriceSnapshot
from .usage import format_duration, isoformat

#: the policies a deadline may come from (``api/server-status``'s ``policy``)
IDLE = "idle"
MAX_AGE = "max_age"
BUDGET = "budget"
#: what a deadline's text calls each
_WORDS = {IDLE: "idle stop", MAX_AGE: "max age stop", BUDGET: "budget stop"}
_HOUR = Decimal(3600)
#: beyond this, a budget "runs out" never (and no datetime overflows)
_NEVER = timedelta(days=365 * 100)


@dataclass(frozen=True)
class Deadline:
    """A policy's stop of one server, if nothing changes: at `at`."""

    policy: str
    at: datetime
    #: a projection at the current rate (a budget not yet used up): "~" in the text
    projected: bool = False

    def to_json(self, now: datetime, lead: timedelta) -> dict:
        """``{"policy", "at", "in_seconds", "warn", "text"}``; `warn` within `lead` of it.

        ``in_seconds`` is never negative: 0 means due (the next policy check stops it).
        """
        left = max(self.at - now, timedelta(0))
        if left:
            when = f"in {'~' if self.projected else ''}{format_duration(left)}"
        else:
            when = "now"
        return {
            "policy": self.policy,
            "at": isoformat(self.at),
            "in_seconds": int(left.total_seconds()),
            "warn": left <= lead,
            "text": f"{_WORDS[self.policy]} {when}",
        }


def spend_rate(status: BudgetStatus, prices: Iterable[PriceSnapshot | None]) -> Decimal:
    """What one hour of the user's running servers (at `prices`) uses of the budget in
    `status`: money or GPU-hours per hour (see :func:`~jupyter_gpu_meter.budgets.hourly_usage`)."""
    return sum((hourly_usage(status, p) for p in prices if p is not None), Decimal(0))


def runs_out_at(status: BudgetStatus, rate: Decimal, now: datetime) -> datetime | None:
    """When the budget in `status` is used up at `rate` per hour from `now`: `now` if it
    is already; None if it never is (nothing spends from it, or beyond a century)."""
    if status.exhausted:
        return now
    if rate <= 0:
        return None
    left = timedelta(seconds=float(status.remaining * _HOUR / rate))
    return now + left if left < _NEVER else None


def budget_deadline(
    status: BudgetStatus,
    price: PriceSnapshot | None,
    *,
    runs_out: datetime | None,
    exhausted_since: datetime | None,
    grace: timedelta,
) -> Deadline | None:
    """When the budget policy stops a server at `price`: `grace` after the budget ran out
    (`exhausted_since`, as the meter first saw it; else `runs_out`, projected). None for
    a server that does not spend from it, or a budget that does not run out."""
    if not spends_from(status, price):
        return None
    if status.exhausted:
        return Deadline(BUDGET, budget_stop_at(exhausted_since or runs_out, grace))
    if runs_out is None:
        return None
    return Deadline(BUDGET, budget_stop_at(runs_out, grace), projected=True)


def server_deadlines(
    server: ServerState,
    *,
    idle_timeout: timedelta | None,
    max_age: timedelta | None,
    budget: Deadline | None = None,
) -> list[Deadline]:
    """`server`'s deadlines, soonest first: the idle stop if its GPUs stay idle (with
    `idle_timeout`), its max age (`max_age`), the `budget`'s. None for a timeout:
    that policy is not the default one (no deadline can be known)."""
    found = [budget] if budget is not None else []
    if idle_timeout is not None:
        at = idle_stop_at(server, idle_timeout)
        if at is not None:
            found.append(Deadline(IDLE, at))
    if max_age is not None and server.started_at is not None:
        at = max_age_stop_at(server, max_age)
        if at is not None:
            found.append(Deadline(MAX_AGE, at))
    return sorted(found, key=lambda deadline: deadline.at)
