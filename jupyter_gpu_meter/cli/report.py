"""``jupyter-gpu-meter report``: per user, sessions, GPU-hours, charges, storage, busy
and idle GPU-hours, and energy."""

from __future__ import annotations

import csv
import io
import json
import sys

from traitlets import CaselessStrEnum, Unicode

from ..clock import utcnow
from ..ledger import Ledger, LedgerSchemaError
from ..usage import decimal_string, format_money, parse_time, usage_by_user
from .common import HOURS_PLACES, _LedgerCommand, table

#: kWh to three places: watt-hours, as the pages show them
ENERGY_KWH_PLACES = 3


class ReportCommand(_LedgerCommand):
    """Per user: sessions, GPU-hours and charges, and storage (GB-hours and charges),
    from the ledger. ``charges`` is GPU and CPU time; ``storage_charges`` comes on top.
    Then busy and idle GPU-hours, and energy (kWh; ``energy_charges`` on top)."""

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
            since, until = parse_time(self.since), parse_time(self.until)
            with Ledger(self.db_url) as ledger:
                ledger.check_revision()
                user = self.user or None
                sums, sessions = ledger.usage_sums(user=user, since=since, until=until)
                storage = ledger.storage_sums(user=user, since=since, until=until)
                efficiency = ledger.efficiency_by_user(user=user, since=since, until=until)
        except (ValueError, LedgerSchemaError) as e:
            self.log.critical("%s", e)
            self.exit(2)
        rows = usage_by_user(
            sessions,
            now=utcnow(),
            since=since,
            until=until,
            sums=sums,
            storage=storage,
            efficiency=efficiency,
        )
        sys.stdout.write(render_report(rows, self.format))


def render_report(rows, fmt: str) -> str:
    """:func:`~jupyter_gpu_meter.usage.usage_by_user`'s rows as a table, CSV or JSON."""

    def money(amount, currency):
        return format_money(amount, currency, code=False, grouping=False)

    def known(value, places=HOURS_PLACES):  # None where unknown: no GPU sample, no counter
        return None if value is None else decimal_string(value, places)

    records = [
        {
            "user": row.user,
            "sessions": row.sessions,
            "running": row.running,
            "gpu_hours": decimal_string(row.gpu_hours, HOURS_PLACES),
            "charges": money(row.charges, row.currency),
            "storage_gb_hours": decimal_string(row.storage_gb_hours, HOURS_PLACES),
            "storage_charges": money(row.storage_charges, row.currency),
            "busy_gpu_hours": known(row.busy_gpu_hours),
            "idle_gpu_hours": known(row.idle_gpu_hours),
            "energy_kwh": known(row.energy_kwh, ENERGY_KWH_PLACES),
            "energy_charges": money(row.energy_charges, row.currency),
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
        "busy_gpu_hours",
        "idle_gpu_hours",
        "energy_kwh",
        "energy_charges",
        "currency",
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue()
    # unknown shows as "–" in the table, empty in the CSV, null in JSON
    return table(columns, [{k: "–" if v is None else v for k, v in r.items()} for r in records])
