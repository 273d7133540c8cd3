"""The CSV export's invoice lines: one per session (part) in a range, one per volume. Pure.

The columns are documented in ``docs/reference/api.md`` (``GET api/export.csv``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from .. import pricing
from .dates import isoformat
from .efficiency import ENERGY_PLACES, SHARE_PLACES, energy_price, session_efficiency
from .money import decimal_string
from .sessions import what_ran
from .totals import clip

_HOUR = Decimal(3600)

#: the columns of the CSV export, in order
EXPORT_COLUMNS = (
    "session_id",
    "user",
    "server",
    "profile",
    "gpu_model",
    "gpus",
    "started_at",
    "ended_at",
    "end_reason",
    "billed_from",
    "billed_until",
    "billed_seconds",
    "gpu_hours",
    "price_per_gpu_hour",
    "cpu_price_per_hour",
    "billing_increment_s",
    "minimum_charge",
    "charge",
    "currency",
    # added with storage billing; sessions' lines leave them empty but kind
    "kind",
    "volume",
    "volume_kind",
    "storage_gb_hours",
    "price_per_gb_month",
    # added with efficiency and energy: the whole session's, on the line that reaches its end
    "busy_gpu_seconds",
    "busy_share",
    "busy_source",
    "memory_max_bytes",
    "energy_kwh",
    "energy_price_per_kwh",
    "energy_charge",
    # added with image versions: the display name of the image the session ran
    "image",
    # added with clusters: the node the session ran on ("" on one host)
    "node",
)
#: the efficiency columns, empty on every line but a session's last
EFFICIENCY_COLUMNS = EXPORT_COLUMNS[EXPORT_COLUMNS.index("busy_gpu_seconds") :][:7]
#: ``kind`` of a server session's line and of a volume's storage line
SESSION_LINE, STORAGE_LINE = "session", "storage"


def export_row(session, *, now: datetime, since=None, until=None, measured=None) -> dict | None:
    """One invoice line: the part of `session` inside [since, until), at its own prices.

    ``billed_from``/``billed_until`` are that part; a running session is billed up
    to `now` and has no ``ended_at``. ``billed_seconds`` is what is charged for:
    that part's length rounded up to the billing increment (a whole number).
    ``gpu_hours`` is exact GPU time, not rounded. None when no part is inside the range.

    The efficiency columns (:data:`EFFICIENCY_COLUMNS`, from what the ledger
    `measured` of the session, see :func:`efficiency_cells`) are the whole
    session's, filled only on the line that reaches its end (``billed_until``
    is when it ended, or `now` while it runs): a session split over two months'
    exports counts its energy once, in the month it ends.
    """
    span = clip(session, now=now, since=since, until=until)
    if span is None:
        return None
    start, end = span
    price = session.price
    row = {
        "session_id": session.id,
        **what_ran(session),
        "started_at": isoformat(session.started_at),
        "ended_at": isoformat(session.ended_at) or "",
        "end_reason": session.end_reason or "",
        "billed_from": isoformat(start),
        "billed_until": isoformat(end),
        "billed_seconds": pricing.billable_seconds(start, end, price.billing_increment_s),
        "gpu_hours": decimal_string(pricing.gpu_seconds(price, start, end) / _HOUR),
        "price_per_gpu_hour": decimal_string(price.price_per_gpu_hour),
        "cpu_price_per_hour": decimal_string(price.cpu_price_per_hour),
        "billing_increment_s": price.billing_increment_s,
        "minimum_charge": decimal_string(price.minimum_charge),
        "charge": decimal_string(pricing.charge(price, start, end)),
        "currency": price.currency,
        "kind": SESSION_LINE,
        "volume": "",
        "volume_kind": "",
        "storage_gb_hours": "",
        "price_per_gb_month": "",
        **efficiency_cells(session, measured, now=now, last=end == session.end(now)),
    }
    return {column: row[column] for column in EXPORT_COLUMNS}  # in the columns' order


def efficiency_cells(session, measured, *, now: datetime, last: bool = True) -> dict:
    """The efficiency columns of `session`'s line: empty but for its `last` line, and
    empty where unknown (no GPU sample, no energy counter)."""
    if not last:
        return dict.fromkeys(EFFICIENCY_COLUMNS, "")
    found = session_efficiency(session, measured, now=now)
    share = found.busy_share
    return {
        "busy_gpu_seconds": _cell(found.busy_gpu_seconds),
        "busy_share": "" if share is None else f"{share:.{SHARE_PLACES}f}",
        "busy_source": found.busy_source,
        "memory_max_bytes": "" if found.memory_max_bytes is None else found.memory_max_bytes,
        "energy_kwh": _cell(found.energy_kwh, ENERGY_PLACES),
        "energy_price_per_kwh": decimal_string(energy_price(session.price)),
        "energy_charge": _cell(None if found.energy_kwh is None else found.energy_charge),
    }


def _cell(value: Decimal | None, places: int = 6) -> str:
    return "" if value is None else decimal_string(value, places)


def storage_row(line) -> dict:
    """One invoice line for a volume kept over the range at one price (a per-volume
    :class:`~jupyter_gpu_meter.ledger.StorageSum`): the session columns stay empty."""
    return {
        **dict.fromkeys(EXPORT_COLUMNS, ""),
        "user": line.user,
        "billed_from": isoformat(line.billed_from),
        "billed_until": isoformat(line.billed_until),
        "charge": decimal_string(line.charge),
        "currency": line.currency,
        "kind": STORAGE_LINE,
        "volume": line.volume,
        "volume_kind": line.kind,
        "storage_gb_hours": decimal_string(line.gb_hours),
        "price_per_gb_month": decimal_string(line.price_per_gb_month),
    }


def export_rows(
    sessions: Iterable, *, now: datetime, since=None, until=None, measured=None
) -> list[dict]:
    """:func:`export_row` of every session with a part in the range, oldest first;
    `measured`: session id -> :class:`~jupyter_gpu_meter.ledger.SessionEfficiency`."""
    measured = measured or {}
    rows = (
        export_row(s, now=now, since=since, until=until, measured=measured.get(s.id))
        for s in sessions
    )
    return [row for row in rows if row is not None]
