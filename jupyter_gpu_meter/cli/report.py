"""``jupyter-gpu-meter report``: per user, sessions, GPU-hours, charges and storage."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime

from traitlets import CaselessStrEnum, Unicode

from ..clock import as_utc, utcnow
from ..ledger import Ledger, LedgerSchemaError
from ..pricing import round_money
from ..report import usage_by_user
from .common import GPU_HOURS, _LedgerCommand, table


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
            "gpu_hours": str(row.gpu_hours.quantize(GPU_HOURS)),
            "charges": str(round_money(row.charges, row.currency)),
            "storage_gb_hours": str(row.storage_gb_hours.quantize(GPU_HOURS)),
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
    return table(columns, records)
