"""``jupyter-gpu-meter budget``: budgets per user or group, for admins.

The commands that change budgets (``set``, ``grant``, ``remove``) are in
:mod:`.budget_change`, the ones that read them (``show``, ``history``) in
:mod:`.budget_show`; here are the group and what they share.
"""

from __future__ import annotations

import getpass
import sys
from decimal import Decimal

from traitlets import Unicode, default
from traitlets.config import Application

from .. import budgets
from ..ledger import Ledger, LedgerSchemaError
from ..pricing import round_money
from .common import GPU_HOURS, _LedgerCommand, start_subcommand


class _BudgetCommand(_LedgerCommand):
    """A budget command: whose budget (``--user`` or ``--group``), who changes it (``--by``)."""

    aliases = {
        **_LedgerCommand.aliases,
        "user": "_BudgetCommand.user",
        "group": "_BudgetCommand.group",
    }
    user = Unicode("", help="The JupyterHub user whose budget it is, e.g. alice.").tag(config=True)
    group = Unicode("", help="The JupyterHub group whose members' budget it is.").tag(config=True)
    by = Unicode(help="Who makes the change, recorded with it (default: your OS user name).").tag(
        config=True
    )

    @default("by")
    def _by_default(self):
        try:
            return getpass.getuser()
        except (OSError, KeyError):  # no name for this uid: --by must say
            return ""

    #: whether the command needs exactly one of --user and --group
    needs_owner = True

    def start(self):
        try:
            if self.user and self.group:
                raise ValueError("give --user or --group, not both")
            if self.needs_owner and not (self.user or self.group):
                raise ValueError("give whose budget it is: --user NAME or --group NAME")
            with Ledger(self.db_url) as ledger:
                ledger.check_revision()
                output = self.run(ledger)
        except (ValueError, LedgerSchemaError) as e:
            self.log.critical("%s", e)
            self.exit(2)
        sys.stdout.write(output)

    @property
    def owner(self) -> tuple[str, str]:
        """(scope, name) of --user or --group."""
        return (budgets.USER, self.user) if self.user else (budgets.GROUP, self.group)

    def changed_by(self) -> str:
        if not self.by:
            raise ValueError("say who makes the change: --by NAME")
        return self.by

    def run(self, ledger: Ledger) -> str:
        raise NotImplementedError


def _describe(amount: Decimal, unit: str, currency: str | None, period: str | None) -> str:
    """E.g. "50.00 USD per calendar month" or "10.0000 GPU-hours per 30 days (rolling)"."""
    text = f"{_show_amount(amount, unit, currency)} {budgets.unit_label(unit, currency)}"
    if period == budgets.MONTH:
        return f"{text} per calendar month"
    if period:
        return f"{text} per {period[len(budgets.ROLLING) :]} days (rolling)"
    return text


def _show_amount(amount: Decimal | None, unit: str, currency: str | None) -> str:
    if amount is None:
        return ""
    if unit == budgets.MONEY and currency:
        return str(round_money(amount, currency))
    return str(amount.quantize(GPU_HOURS))


def _split(groups: str) -> list[str]:
    return [group.strip() for group in groups.split(",") if group.strip()]


class BudgetCommand(Application):
    """Budgets per user or group: set, grant, remove, show, history."""

    name = "jupyter-gpu-meter budget"
    description = """
    Budgets of money or GPU-hours per period, for users and groups. The meter
    warns users near their budget and stops their servers after it runs out;
    the spawner refuses a start the remaining budget cannot pay for.
    """
    # declared by name, imported when run; each help is its command's docstring (tested)
    subcommands = {
        "set": (
            "jupyter_gpu_meter.cli.budget_change.BudgetSetCommand",
            "Set the budget of a user, or of each member of a group.",
        ),
        "grant": (
            "jupyter_gpu_meter.cli.budget_change.BudgetGrantCommand",
            "Add an amount to a budget for the current period only.",
        ),
        "remove": (
            "jupyter_gpu_meter.cli.budget_change.BudgetRemoveCommand",
            "Remove the budget of a user or a group.",
        ),
        "show": (
            "jupyter_gpu_meter.cli.budget_show.BudgetShowCommand",
            "Budgets with what is spent and left in the current period.",
        ),
        "history": (
            "jupyter_gpu_meter.cli.budget_show.BudgetHistoryCommand",
            "Every change to budgets: who, when, what, how much.",
        ),
    }

    def start(self):
        return start_subcommand(
            self, "%r is not a budget command: use %s", "give a budget command: %s"
        )
