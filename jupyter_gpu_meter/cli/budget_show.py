"""``jupyter-gpu-meter budget show`` and ``history``: budgets, what is spent, every change."""

from __future__ import annotations

import json
from decimal import Decimal

from traitlets import CaselessStrEnum, Unicode

from .. import budgets
from ..clock import utcnow
from ..usage import decimal_string, isoformat
from .budget import _BudgetCommand, _show_amount, _split
from .common import table


class BudgetShowCommand(_BudgetCommand):
    """Budgets with what is spent and left in the current period."""

    name = "jupyter-gpu-meter budget show"
    description = """
    Show budgets: limit (amount plus this period's grants), spent, remaining and
    the fraction used in the current period. With --user, the budget that
    applies to that user (their own, or their groups' given with --groups);
    without, every budget (a group's spending is per member: shown with --user).
    """
    needs_owner = False
    aliases = {
        **_BudgetCommand.aliases,
        "groups": "BudgetShowCommand.groups",
        "format": "BudgetShowCommand.format",
    }
    groups = Unicode(
        "",
        help="The user's JupyterHub groups, comma-separated, e.g. students,staff "
        "(the ledger does not know them).",
    ).tag(config=True)
    format = CaselessStrEnum(["table", "json"], "table", help="Output format.").tag(config=True)

    def run(self, ledger):
        now = utcnow()
        rows = []
        if self.user:
            status = ledger.user_budget_status(self.user, _split(self.groups), now)
            if status is not None:
                rows.append(_status_row(status))
            elif self.format == "table":
                return f"user {self.user}: no budget applies (no limit)\n"
        else:
            changes = ledger.budget_changes()
            for budget in ledger.budgets():
                if self.group and (budget.scope, budget.name) != self.owner:
                    continue
                if budget.scope == budgets.USER:
                    status = ledger.budget_status(budget, user=budget.name, now=now)
                    rows.append(_status_row(status))
                else:
                    rows.append(_group_row(budget, changes, now))
            if self.group and not rows and self.format == "table":
                return f"group {self.group} has no budget\n"
        if self.format == "json":
            return json.dumps(rows, indent=2) + "\n"
        columns = ["user", "budget", "period", "since"]
        columns += ["limit", "spent", "remaining", "used", "unit"]
        shown = [
            {
                "user": row["user"] or "(each member)",
                "budget": f"{row['scope']} {row['name']}",
                "period": row["period"],
                "since": row["period_start"][:16].replace("T", " "),
                "limit": row["limit"],
                "spent": row["spent"] or "-",
                "remaining": row["remaining"] or "-",
                "used": f"{Decimal(row['fraction']) * 100:.1f} %" if row["fraction"] else "-",
                "unit": row["unit"],
            }
            for row in rows
        ]
        return table(columns, shown) if shown else "no budgets\n"


def _status_row(status: budgets.BudgetStatus) -> dict:
    def show(amount):
        return _show_amount(amount, status.unit, status.currency)

    # rounded apart, spent and remaining could add up to a cent more than the limit
    remaining = max(Decimal(show(status.limit)) - Decimal(show(status.spent)), Decimal(0))
    return {
        "user": status.user,
        "scope": status.scope,
        "name": status.name,
        "period": status.period,
        "period_start": isoformat(status.period_start),
        "amount": show(status.amount),
        "granted": show(status.granted),
        "limit": show(status.limit),
        "spent": show(status.spent),
        "remaining": show(remaining),
        "fraction": decimal_string(status.fraction, 4),
        "unit": status.unit_label,
        "currency": status.currency,
    }


def _group_row(budget, changes, now) -> dict:
    """A group budget's limit this period (with the group's grants); spending is per member."""
    start = budgets.period_start(budget.period, now)
    granted = budgets.granted(budget, changes, now=now)

    def show(amount):
        return _show_amount(amount, budget.unit, budget.currency)

    return {
        "user": None,
        "scope": budget.scope,
        "name": budget.name,
        "period": budget.period,
        "period_start": isoformat(start),
        "amount": show(budget.amount),
        "granted": show(granted),
        "limit": show(budget.amount + granted),
        "spent": None,
        "remaining": None,
        "fraction": None,
        "unit": budgets.unit_label(budget.unit, budget.currency),
        "currency": budget.currency,
    }


class BudgetHistoryCommand(_BudgetCommand):
    """Every change to budgets: who, when, what, how much."""

    name = "jupyter-gpu-meter budget history"
    description = (
        "Every budget change, oldest first; only one user's or group's with --user/--group."
    )
    needs_owner = False
    aliases = {**_BudgetCommand.aliases, "format": "BudgetHistoryCommand.format"}
    format = CaselessStrEnum(["table", "json"], "table", help="Output format.").tag(config=True)

    def run(self, ledger):
        scope, name = self.owner if (self.user or self.group) else (None, None)
        rows = [
            {
                "at": isoformat(change.at),
                "by": change.by,
                "scope": change.scope,
                "name": change.name,
                "change": change.change,
                "amount": _show_amount(change.amount, change.unit or "", change.currency),
                "unit": budgets.unit_label(change.unit, change.currency) if change.unit else "",
                "period": change.period or "",
                "note": change.note,
            }
            for change in ledger.budget_changes(scope=scope, name=name)
        ]
        if self.format == "json":
            return json.dumps(rows, indent=2) + "\n"
        if not rows:
            return "no budget changes\n"
        for row in rows:
            row["at"] = row["at"][:19].replace("T", " ")
        return table(list(rows[0]), rows)
