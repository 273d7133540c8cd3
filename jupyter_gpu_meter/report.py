"""Usage per user from ledger sessions and storage: GPU-hours, charges, sessions. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .pricing import (
    charge_units,
    from_byte_hours,
    from_charge_units,
    from_gpu_microseconds,
    from_storage_units,
    gpu_microseconds,
)


@dataclass(frozen=True)
class UserUsage:
    user: str
    sessions: int
    running: int
    gpu_hours: Decimal
    charges: Decimal
    currency: str
    #: homes and snapshots kept: GB-hours and their charge (not in `charges`)
    storage_gb_hours: Decimal = Decimal(0)
    storage_charges: Decimal = Decimal(0)


def usage_by_user(
    sessions: Iterable,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    sums: Iterable = (),
    storage: Iterable = (),
) -> list[UserUsage]:
    """Totals per user and currency over the part of each session inside [since, until).

    Running sessions count up to `now`. Each session is charged at the price
    snapshot it started with, so a later price change never changes it.
    `sums` (:class:`~jupyter_gpu_meter.ledger.UsageSum`) are sessions the
    database already added up, wholly inside the range and not among
    `sessions`: see :meth:`~jupyter_gpu_meter.ledger.Ledger.usage_sums`. GPU
    time and charges add up as whole numbers and are divided once, so the
    totals are the same however the sessions were split. `storage`
    (:class:`~jupyter_gpu_meter.ledger.StorageSum`, already over the range)
    adds each user's storage; a user with storage and no session gets a row.
    """
    totals: dict[tuple[str, str], list] = {}
    kept: dict[tuple[str, str], list] = {}
    for part in storage:
        entry = kept.setdefault((part.user, part.currency), [0, 0])
        entry[0] += part.byte_hours
        entry[1] += part.charge_units
        totals.setdefault((part.user, part.currency), [0, 0, 0, 0])
    for part in sums:
        entry = totals.setdefault((part.user, part.currency), [0, 0, 0, 0])
        entry[0] += part.sessions
        entry[2] += part.gpu_microseconds
        entry[3] += part.charge_units
    for session in sessions:
        start = max(session.started_at, since) if since else session.started_at
        end = session.ended_at or now
        if until:
            end = min(end, until)
        if end <= start:
            continue
        entry = totals.setdefault((session.user, session.price.currency), [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += session.ended_at is None
        entry[2] += gpu_microseconds(session.price, start, end)
        entry[3] += charge_units(session.price, start, end)
    rows = []
    for (user, currency), (count, running, gpu_us, units) in sorted(totals.items()):
        byte_hours, storage_units = kept.get((user, currency), (0, 0))
        rows.append(
            UserUsage(
                user,
                count,
                running,
                from_gpu_microseconds(gpu_us),
                from_charge_units(units),
                currency,
                from_byte_hours(byte_hours),
                from_storage_units(storage_units),
            )
        )
    return rows
