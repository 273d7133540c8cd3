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
options (NFS through ``driver_opts``). Those are measured the same way by a
helper container (:func:`measure_with_helper`: the volumes mounted read-only,
no network, ``HomeVolumes.helper_image``); one it cannot measure either is
logged and not billed.

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

import docker.errors

from .homes import HOME, SNAPSHOT, HomeError, Volume, labelled_volumes, run_helper
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


def measure_volumes(
    api, *, hub_id: str, helper_image: str | None = None, log=None
) -> list[Measured]:
    """This hub's homes and snapshots and their sizes now, by name. Blocking.

    One ``volumes`` list and one ``df`` call (which measures every volume on
    the engine; only when this hub has any). A volume ``df`` cannot size (a
    local volume with options, e.g. NFS; a volume plugin's) is measured by
    :func:`measure_with_helper` when `helper_image` is given; where that
    fails too (the error goes to `log`), or for a volume deleted between the
    calls, the size is unknown (None).
    """
    volumes = [v for v in labelled_volumes(api, hub_id=hub_id) if v.kind in KINDS]
    if not volumes:
        return []
    sizes = volume_sizes(api.df())
    unknown = [v.name for v in volumes if sizes.get(v.name) is None]
    if unknown and helper_image:
        try:
            sizes.update(measure_with_helper(api, unknown, image=helper_image))
        except (HomeError, docker.errors.APIError) as e:
            if log is not None:
                log.error(
                    "Measuring %d volume(s) with a helper container failed: %s", len(unknown), e
                )
    return [Measured(v, sizes.get(v.name)) for v in volumes]


#: the most volumes one measuring helper container mounts
HELPER_BATCH = 50

#: per mounted volume: "<index> <bytes>", as Docker's df counts them (every
#: entry but folders, by its apparent size, each inode once)
_MEASURE_SCRIPT = """\
for dir in /volumes/*; do
  size=$(find "$dir" ! -type d -printf '%i %s\\n' | sort -u -k1,1 | awk '{s+=$2} END {print s+0}')
  echo "${dir#/volumes/} $size"
done
"""


def measure_with_helper(api, names: list[str], *, image: str) -> dict[str, int]:
    """Volume name -> apparent size, measured inside helper containers. Blocking.

    For volumes Docker's ``df`` cannot size. Each container mounts up to
    :data:`HELPER_BATCH` of them read-only, with no network and only the
    capability to read every file; :class:`~jupyter_gpu_meter.homes.HomeError`
    if one fails.
    """
    sizes = {}
    for start in range(0, len(names), HELPER_BATCH):
        batch = names[start : start + HELPER_BATCH]
        output = run_helper(
            api,
            image=image,
            purpose="measure",
            volume=batch[0],
            script=_MEASURE_SCRIPT,
            mounts={name: f"/volumes/{index}:ro" for index, name in enumerate(batch)},
            cap_add=("DAC_READ_SEARCH",),
            timeout=600,
        )
        for line in output.splitlines():
            index, _, size = line.partition(" ")
            if index.isdigit() and size.isdigit() and int(index) < len(batch):
                sizes[batch[int(index)]] = int(size)
    return sizes


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
    its last period's end (or its creation label's time, if it was made
    again since), or for a volume never measured its creation, but no
    earlier than `now` - `interval`. Only the label tells a volume made
    again: Docker's ``CreatedAt`` moves each time a container mounts the
    volume, and would leave the time since the last period unbilled.
    Volumes of unknown size, and periods that would not last (a clock that
    went back), are left out.
    """
    periods = []
    for item in measured:
        if item.size_bytes is None:
            continue
        volume = item.volume
        last = ends.get(volume.name)
        if last is not None:
            made = volume.made_at
            start = max(last, made) if made is not None else last
        else:
            start = now - interval
            if volume.created_at is not None:
                start = max(start, volume.created_at)
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
