"""What the commands share: the ledger a command reads, command groups, tables."""

from __future__ import annotations

from decimal import Decimal

from traitlets import Unicode, default
from traitlets.config import Application

from ..ledger import DEFAULT_URL, default_url

#: GPU-hours (and GB-hours) are shown to 4 places
GPU_HOURS = Decimal("0.0001")


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


def start_subcommand(app: Application, unknown: str, missing: str):
    """Start the subcommand given to ``app``, a group of commands (``budget``, ``homes``).

    Without one, or with an unknown one, log which there are (``unknown`` % (it,
    the subcommands), ``missing`` % the subcommands) and exit with status 2.
    """
    if app.subapp is None:
        commands = ", ".join(app.subcommands)
        if app.extra_args:
            app.log.critical(unknown, app.extra_args[0], commands)
        else:
            app.log.critical(missing, commands)
        app.exit(2)
    return app.subapp.start()


class _Group(Application):
    """A group of commands: runs the one given."""

    def start(self):
        return start_subcommand(self, "%r is not a command here: use %s", "give a command: %s")


def table(columns: list[str], records: list[dict]) -> str:
    """``records`` as left-aligned text columns under a header line; None shows as nothing."""
    lines = [columns] + [
        ["" if record[c] is None else str(record[c]) for c in columns] for record in records
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )
