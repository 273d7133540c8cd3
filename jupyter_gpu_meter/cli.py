"""``jupyter-gpu-meter``: the meter service, and commands on its ledger.

jupyter-gpu-meter [--config jupyterhub_config.py]      run the service
jupyter-gpu-meter report [--user U] [--since DATE] [--until DATE] [--format table|csv|json]
jupyter-gpu-meter upgrade-db [--db-url URL]
jupyter-gpu-meter budget set|grant|remove|show|history ...
jupyter-gpu-meter homes list|remove ...; snapshots list|take|restore|delete ... (homes_cli)
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import sys
from datetime import datetime
from decimal import Decimal

from traitlets import CaselessStrEnum, Unicode, default
from traitlets.config import Application

from . import budgets
from .clock import as_utc, utcnow
from .homes_cli import HomesCommand, SnapshotsCommand
from .ledger import DEFAULT_URL, Ledger, LedgerSchemaError, default_url
from .pricing import Pricing, round_money
from .report import usage_by_user
from .service.app import MeterService

_GPU_HOURS = Decimal("0.0001")


class _LedgerCommand(Application):
    """A command that reads the ledger named like the service's (``--db-url`` or the config)."""

    aliases = {
        "config": "_LedgerCommand.config_file",
        "db-url": "_LedgerCommand.db_url",
    }
    config_file = Unicode("", help="A config file to read, e.g. jupyterhub_config.py.").tag(
        config=True
    )
    db_url = Unicode(help=f"The ledger's SQLAlchemy URL (default {DEFAULT_URL}).").tag(config=True)

    @default("db_url")
    def _db_url_default(self):
        return default_url(self.config)  # the service's setting, when the config gives one

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)


def _parse_date(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use ISO 8601, e.g. 2026-11-01 or 2026-11-01T12:00:00+00:00"
        ) from None


class ReportCommand(_LedgerCommand):
    """Per user: sessions, GPU-hours and charges, and storage (GB-hours and charges),
    from the ledger. ``charges`` is GPU and CPU time; ``storage_charges`` comes on top."""

    name = "jupyter-gpu-meter report"
    description = __doc__
    aliases = {
        **_LedgerCommand.aliases,
        "user": "ReportCommand.user",
        "since": "ReportCommand.since",
        "until": "ReportCommand.until",
        "format": "ReportCommand.format",
    }
    user = Unicode("", help="Only this user.").tag(config=True)
    since = Unicode("", help="Start of the range, ISO 8601 (UTC if no zone), e.g. 2026-11-01.").tag(
        config=True
    )
    until = Unicode("", help="End of the range (exclusive), ISO 8601.").tag(config=True)
    format = CaselessStrEnum(["table", "csv", "json"], "table", help="Output format.").tag(
        config=True
    )

    def start(self):
        try:
            since, until = _parse_date(self.since), _parse_date(self.until)
            with Ledger(self.db_url) as ledger:
                ledger.check_revision()
                user = self.user or None
                sums, sessions = ledger.usage_sums(user=user, since=since, until=until)
                storage = ledger.storage_sums(user=user, since=since, until=until)
        except (ValueError, LedgerSchemaError) as e:
            self.log.critical("%s", e)
            self.exit(2)
        rows = usage_by_user(
            sessions, now=utcnow(), since=since, until=until, sums=sums, storage=storage
        )
        sys.stdout.write(render_report(rows, self.format))


def render_report(rows, fmt: str) -> str:
    records = [
        {
            "user": row.user,
            "sessions": row.sessions,
            "running": row.running,
            "gpu_hours": str(row.gpu_hours.quantize(_GPU_HOURS)),
            "charges": str(round_money(row.charges, row.currency)),
            "storage_gb_hours": str(row.storage_gb_hours.quantize(_GPU_HOURS)),
            "storage_charges": str(round_money(row.storage_charges, row.currency)),
            "currency": row.currency,
        }
        for row in rows
    ]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    columns = [
        "user",
        "sessions",
        "running",
        "gpu_hours",
        "charges",
        "storage_gb_hours",
        "storage_charges",
        "currency",
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    return _table(columns, records)


class UpgradeDBCommand(_LedgerCommand):
    """Create the ledger's tables, or migrate them to this version (alembic)."""

    name = "jupyter-gpu-meter upgrade-db"
    description = __doc__

    def start(self):
        with Ledger(self.db_url) as ledger:
            ledger.upgrade()
            print(f"ledger {ledger.url} is up to date")


# --- budget ----------------------------------------------------------------------


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
    return str(amount.quantize(_GPU_HOURS))


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


def _split(groups: str) -> list[str]:
    return [group.strip() for group in groups.split(",") if group.strip()]


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
        table = [
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
        return _table(columns, table) if table else "no budgets\n"


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
        "period_start": status.period_start.isoformat(),
        "amount": show(status.amount),
        "granted": show(status.granted),
        "limit": show(status.limit),
        "spent": show(status.spent),
        "remaining": show(remaining),
        "fraction": str(status.fraction.quantize(Decimal("0.0001"))),
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
        "period_start": start.isoformat(),
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
                "at": change.at.isoformat(),
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
        return _table(list(rows[0]), rows)


def _table(columns: list[str], records: list[dict]) -> str:
    table = [columns] + [[str(record[c]) for c in columns] for record in records]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("  ".join(cells).rstrip() + "\n")
    return "".join(lines)


class BudgetCommand(Application):
    """Budgets per user or group: set, grant, remove, show, history."""

    name = "jupyter-gpu-meter budget"
    description = """
    Budgets of money or GPU-hours per period, for users and groups. The meter
    warns users near their budget and stops their servers after it runs out;
    the spawner refuses a start the remaining budget cannot pay for.
    """
    subcommands = {
        "set": (BudgetSetCommand, BudgetSetCommand.__doc__),
        "grant": (BudgetGrantCommand, BudgetGrantCommand.__doc__),
        "remove": (BudgetRemoveCommand, BudgetRemoveCommand.__doc__),
        "show": (BudgetShowCommand, BudgetShowCommand.__doc__),
        "history": (BudgetHistoryCommand, BudgetHistoryCommand.__doc__),
    }

    def start(self):
        if self.subapp is None:
            commands = ", ".join(self.subcommands)
            if self.extra_args:
                self.log.critical(
                    "%r is not a budget command: use %s", self.extra_args[0], commands
                )
            else:
                self.log.critical("give a budget command: %s", commands)
            self.exit(2)
        return self.subapp.start()


MeterService.subcommands = {
    "report": (ReportCommand, ReportCommand.__doc__),
    "upgrade-db": (UpgradeDBCommand, UpgradeDBCommand.__doc__),
    "budget": (BudgetCommand, BudgetCommand.__doc__),
    "homes": (HomesCommand, HomesCommand.__doc__),
    "snapshots": (SnapshotsCommand, SnapshotsCommand.__doc__),
}


def main(argv=None):
    MeterService.launch_instance(argv)


if __name__ == "__main__":
    main()
