"""``jupyter-gpu-meter budget set``, ``grant`` and ``remove``: the commands that change budgets."""

from __future__ import annotations

from traitlets import Unicode

from .. import budgets
from ..clock import utcnow
from ..pricing import Pricing
from .budget import _BudgetCommand, _describe, _split


class BudgetSetCommand(_BudgetCommand):
    """Set the budget of a user, or of each member of a group."""

    name = "jupyter-gpu-meter budget set"
    description = """
    Set (or change) a budget: an amount of money or GPU-hours per calendar
    month or per rolling window of days, for a user or for each member of a
    group. Left out, --unit, --period and --currency keep the budget's current
    ones; a new budget defaults to money per month in the hub's currency.
    """
    examples = (
        "jupyter-gpu-meter budget set --group students --amount 50 --currency USD\n"
        "jupyter-gpu-meter budget set --user alice --amount 20 --unit gpu-hours "
        "--period rolling:30\n"
    )
    aliases = {
        **_BudgetCommand.aliases,
        "amount": "BudgetSetCommand.amount",
        "unit": "BudgetSetCommand.unit",
        "period": "BudgetSetCommand.period",
        "currency": "BudgetSetCommand.currency",
        "by": "_BudgetCommand.by",
    }
    amount = Unicode("", help="The amount per period, e.g. 50 or 12.5.").tag(config=True)
    unit = Unicode("", help="money (the default) or gpu-hours.").tag(config=True)
    period = Unicode(
        "",
        help="month (the calendar month in UTC, the default) or rolling:<days>, e.g. rolling:30.",
    ).tag(config=True)
    currency = Unicode(
        "",
        help="""
        ISO 4217 code of a money budget, e.g. USD. Default: the budget's current
        one, else the hub's currency, c.Pricing.currency (read from --config).
        """,
    ).tag(config=True)

    def run(self, ledger):
        if not self.amount:
            raise ValueError("give the budget's amount per period: --amount, e.g. --amount 50")
        scope, name = self.owner
        current = ledger.get_budget(scope, name)
        unit = budgets.parse_unit(self.unit or (current.unit if current else budgets.MONEY))
        period = self.period or (current.period if current else budgets.MONTH)
        kept = current.currency if current is not None and unit == budgets.MONEY else None
        hub_currency = Pricing(config=self.config).currency
        currency = budgets.budget_currency(unit, self.currency or kept, hub_currency)
        changed = ledger.set_budget(
            scope=scope,
            name=name,
            amount=self.amount,
            unit=unit,
            period=period,
            currency=currency,
            by=self.changed_by(),
            at=utcnow(),
        )
        new = ledger.get_budget(scope, name)
        text = _describe(new.amount, new.unit, new.currency, new.period)
        if not changed:
            return f"{scope} {name}: budget unchanged, {text}\n"
        if current is None:
            return f"{scope} {name}: budget set to {text}\n"
        was = _describe(current.amount, current.unit, current.currency, current.period)
        return f"{scope} {name}: budget set to {text} (was {was})\n"


class BudgetGrantCommand(_BudgetCommand):
    """Add an amount to a budget for the current period only."""

    name = "jupyter-gpu-meter budget grant"
    description = """
    Grant an extra amount for the current period only (this calendar month, or
    the rolling window), in the budget's unit. A user without a budget of
    their own gets it on top of their group's budget: name the groups
    (--groups) or the unit (--unit, --currency).
    """
    examples = (
        'jupyter-gpu-meter budget grant --user alice --amount 10 --note "thesis deadline"\n'
        "jupyter-gpu-meter budget grant --user bob --amount 5 --groups students\n"
    )
    aliases = {
        **_BudgetCommand.aliases,
        "amount": "BudgetGrantCommand.amount",
        "note": "BudgetGrantCommand.note",
        "groups": "BudgetGrantCommand.groups",
        "unit": "BudgetGrantCommand.unit",
        "currency": "BudgetGrantCommand.currency",
        "by": "_BudgetCommand.by",
    }
    amount = Unicode("", help="The extra amount, e.g. 10.").tag(config=True)
    note = Unicode("", help="Why, recorded with the grant.").tag(config=True)
    groups = Unicode(
        "", help="The user's JupyterHub groups, comma-separated, when they have no own budget."
    ).tag(config=True)
    unit = Unicode("", help="money or gpu-hours, when the user has no own budget.").tag(config=True)
    currency = Unicode("", help="ISO 4217 code, for a money grant without an own budget.").tag(
        config=True
    )

    def run(self, ledger):
        if not self.amount:
            raise ValueError("give the extra amount: --amount, e.g. --amount 10")
        scope, name = self.owner
        unit, currency = self.unit or None, self.currency or None
        if ledger.get_budget(scope, name) is None and unit is None and scope == budgets.USER:
            applied = budgets.effective_budget(name, _split(self.groups), ledger.budgets())
            if applied is None:
                raise ValueError(
                    f"user {name} has no budget of their own, and no budget of the groups given "
                    "(--groups a,b) applies: set one with 'budget set', or name the unit of the "
                    "grant with --unit (and --currency)"
                )
            unit, currency = applied.unit, applied.currency
        change = ledger.grant_budget(
            scope=scope,
            name=name,
            amount=self.amount,
            unit=unit,
            currency=currency,
            note=self.note,
            by=self.changed_by(),
            at=utcnow(),
        )
        text = _describe(change.amount, change.unit, change.currency, None)
        return f"{scope} {name}: granted {text} for the current period\n"


class BudgetRemoveCommand(_BudgetCommand):
    """Remove the budget of a user or a group."""

    name = "jupyter-gpu-meter budget remove"
    description = """
    Remove a budget. A user whose own budget is removed falls back to their
    groups' budgets, if any; grants made before no longer count.
    """
    aliases = {**_BudgetCommand.aliases, "by": "_BudgetCommand.by"}

    def run(self, ledger):
        scope, name = self.owner
        if ledger.remove_budget(scope=scope, name=name, by=self.changed_by(), at=utcnow()):
            return f"{scope} {name}: budget removed\n"
        return f"{scope} {name} has no budget of its own: nothing removed\n"
