"""``jupyter-gpu-meter``: the meter service, and commands on its ledger.

jupyter-gpu-meter [--config jupyterhub_config.py]      run the service
jupyter-gpu-meter report [--user U] [--since DATE] [--until DATE] [--format table|csv|json]
jupyter-gpu-meter upgrade-db [--db-url URL]
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import datetime
from decimal import Decimal

from traitlets import CaselessStrEnum, Unicode, default
from traitlets.config import Application

from .clock import as_utc, utcnow
from .ledger import DEFAULT_URL, Ledger, LedgerSchemaError
from .pricing import round_money
from .report import usage_by_user
from .service.app import DB_URL_ENV, MeterService

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
        # the service's setting, when the config file gives one
        configured = self.config.get("MeterService", {}).get("db_url")
        return configured or os.environ.get(DB_URL_ENV, DEFAULT_URL)

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
    """Per user: sessions, GPU-hours and charges, from the ledger."""

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
                sessions = ledger.sessions(user=self.user or None, since=since, until=until)
        except (ValueError, LedgerSchemaError) as e:
            self.log.critical("%s", e)
            self.exit(2)
        rows = usage_by_user(sessions, now=utcnow(), since=since, until=until)
        sys.stdout.write(render_report(rows, self.format))


def render_report(rows, fmt: str) -> str:
    records = [
        {
            "user": row.user,
            "sessions": row.sessions,
            "running": row.running,
            "gpu_hours": str(row.gpu_hours.quantize(_GPU_HOURS)),
            "charges": str(round_money(row.charges, row.currency)),
            "currency": row.currency,
        }
        for row in rows
    ]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    columns = ["user", "sessions", "running", "gpu_hours", "charges", "currency"]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    table = [columns] + [[str(record[c]) for c in columns] for record in records]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = []
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("  ".join(cells).rstrip() + "\n")
    return "".join(lines)


class UpgradeDBCommand(_LedgerCommand):
    """Create the ledger's tables, or migrate them to this version (alembic)."""

    name = "jupyter-gpu-meter upgrade-db"
    description = __doc__

    def start(self):
        with Ledger(self.db_url) as ledger:
            ledger.upgrade()
            print(f"ledger {ledger.url} is up to date")


MeterService.subcommands = {
    "report": (ReportCommand, ReportCommand.__doc__),
    "upgrade-db": (UpgradeDBCommand, UpgradeDBCommand.__doc__),
}


def main(argv=None):
    MeterService.launch_instance(argv)


if __name__ == "__main__":
    main()
