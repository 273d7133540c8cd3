"""Storage billed by use: measuring homes and snapshots, and the periods the ledger bills.

:func:`measure_volumes` is plumbing (blocking docker-py calls: run it off the
event loop); :func:`plan_periods` is pure.

Sizes come from Docker's own disk-usage API (``GET /system/df``, docker-py
``APIClient.df()``): for each volume of the ``local`` driver, the sum of its
files' apparent sizes (``st_size``; a hard-linked file counted once, folders
not counted). Apparent, not allocated: a sparse 10 GB file is billed as 10 GB.
It is the size the user sees (``ls -l``, ``du --apparent-size``), the same on
every filesystem whatever its block size, and what a snapshot, a backup or a
move to another disk or S3 costs (copies often fill sparse files in). Docker
measures only volumes of the ``local`` driver without options: it reports -1
for other drivers (a volume plugin) and leaves out local volumes with
options (NFS through ``driver_opts``, tmpfs). Those are logged and not billed.

A period runs from the volume's previous measurement to this one and is
billed at the size measured now. A volume's first period starts when Docker
created it, but no earlier than one measuring interval ago (a meter started
on a host with old volumes does not bill their past). A restarted meter goes
on from the end of the volume's last period in the ledger (the time it was
down is billed at the size it finds). A deleted volume gets no more periods:
its charge stops at its last measurement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from .homes import HOME, SNAPSHOT, Volume, labelled_volumes
from .ledger.records import StoragePeriod

#: the volume kinds that are measured and billed
KINDS = (HOME, SNAPSHOT)


@dataclass(frozen=True)
class Measured:
    """A labelled volume and its size now (None: Docker could not tell)."""

    volume: Volume
    size_bytes: int | None


def volume_sizes(df: Mapping) -> dict[str, int | None]:
    """volume name -> size in bytes from a ``df`` answer; None where Docker says -1."""
    sizes = {}
    for info in df.get("Volumes") or []:
        size = (info.get("UsageData") or {}).get("Size", -1)
        sizes[info["Name"]] = size if isinstance(size, int) and size >= 0 else None
    return sizes


def measure_volumes(api, *, hub_id: str) -> list[Measured]:
    """This hub's homes and snapshots and their sizes now, by name. Blocking.

    One ``volumes`` list and one ``df`` call (which measures every volume on
    the engine; only when this hub has any). A volume ``df`` does not list
    (a local volume with options, e.g. NFS; or one deleted between the two
    calls) has an unknown size, like one Docker reports as -1.
    """
    volumes = [v for v in labelled_volumes(api, hub_id=hub_id) if v.kind in KINDS]
    if not volumes:
        return []
    sizes = volume_sizes(api.df())
    return [Measured(v, sizes.get(v.name)) for v in volumes]


def plan_periods(
    measured: Iterable[Measured],
    ends: Mapping[str, datetime],
    *,
    now: datetime,
    interval: timedelta,
    price_per_gb_month: Decimal,
    currency: str,
) -> list[StoragePeriod]:
    """The periods one measuring pass at `now` records. Pure.

    `ends`: volume name -> the end of its last period in the ledger. Each
    volume of known size gets [start, now] at its size now, where start is
    its last period's end (or its creation, if it was made again since), or
    for a volume never measured its creation, but no earlier than
    `now` - `interval`. Volumes of unknown size, and periods that would not
    last (a clock that went back), are left out.
    """
    periods = []
    for item in measured:
        if item.size_bytes is None:
            continue
        volume = item.volume
        created = volume.created_at
        last = ends.get(volume.name)
        if last is not None:
            start = max(last, created) if created is not None else last
        else:
            start = now - interval
            if created is not None:
                start = max(start, created)
        if start >= now:
            continue
        periods.append(
            StoragePeriod(
                user=volume.user,
                volume=volume.name,
                kind=volume.kind,
                started_at=start,
                ended_at=now,
                size_bytes=item.size_bytes,
                price_per_gb_month=price_per_gb_month,
                currency=currency,
            )
        )
    return periods
