"""Budgets: which one applies to a user, and how much of it is spent. Pure.

A budget is an amount of money (in one currency) or of GPU-hours per period:
the calendar month in UTC (``"month"``) or the last N days (``"rolling:30"``).
It belongs to a user or to a JupyterHub group; a group budget applies to each
member on their own ("students: 50 USD per month each"). A user's own budget
overrides their groups'; among several groups the largest amount applies.

Grants add to a budget for the current period only: a grant counts while its
time lies in the period (this month, or the last N days).

The ledger stores budgets and every change to them
(:meth:`jupyter_gpu_meter.ledger.Ledger.budgets`,
:meth:`~jupyter_gpu_meter.ledger.Ledger.budget_changes`); the functions here
take those records, or any objects with the same attributes, plus the user's
sessions, and compute what is left. Nothing here touches a database.

Storage (homes and snapshots) counts against money budgets: the ledger adds
up its charge over the period (:meth:`~jupyter_gpu_meter.ledger.Ledger.storage_sums`,
each measured period at its own storage price) and the functions here add
that in. Energy counts likewise (:meth:`~jupyter_gpu_meter.ledger.Ledger.efficiency_by_user`,
each session's energy at its own energy price). GPU-hour budgets count GPU time only.

:class:`Budgets` (:mod:`.settings`) is the one configurable here: the settings
that both the spawner and the meter read; the rules are pure (:mod:`.rules`).
"""

from __future__ import annotations

from .rules import (
    CHANGES,
    GPU_HOURS,
    GRANT,
    GROUP,
    MAX_ROLLING_DAYS,
    MONEY,
    MONTH,
    REMOVE,
    ROLLING,
    SCOPES,
    SET,
    UNITS,
    USER,
    Budget,
    BudgetStatus,
    Change,
    Energy,
    Session,
    Storage,
    budget_currency,
    budget_status,
    budget_view,
    effective_budget,
    granted,
    hourly_usage,
    parse_amount,
    parse_currency_for,
    parse_name,
    parse_period,
    parse_scope,
    parse_unit,
    period_start,
    spends_from,
    spent,
    unit_label,
)
from .settings import Budgets

__all__ = [
    "Budget",
    "BudgetStatus",
    "Budgets",
    "CHANGES",
    "Change",
    "Energy",
    "GPU_HOURS",
    "GRANT",
    "GROUP",
    "MAX_ROLLING_DAYS",
    "MONEY",
    "MONTH",
    "REMOVE",
    "ROLLING",
    "SCOPES",
    "SET",
    "Session",
    "Storage",
    "UNITS",
    "USER",
    "budget_currency",
    "budget_status",
    "budget_view",
    "effective_budget",
    "granted",
    "hourly_usage",
    "parse_amount",
    "parse_currency_for",
    "parse_name",
    "parse_period",
    "parse_scope",
    "parse_unit",
    "period_start",
    "spends_from",
    "spent",
    "unit_label",
]
