"""The meter's storage pass: measure this hub's homes and snapshots, record their periods.

:func:`storage_pass` is plumbing (Docker and the ledger, blocking): the meter
runs it every ``MeterService.storage_interval`` in a thread of its own, so a
slow measurement delays neither the event loop nor session writes; tests call
it with the time they choose. :func:`report` logs what a pass found.
What is measured and billed: :mod:`jupyter_gpu_meter.storage`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..ledger.models import name_problem
from ..storage import measure_volumes, plan_periods


@dataclass(frozen=True)
class StoragePass:
    """What one storage measurement found and recorded."""

    measured_at: datetime
    #: volumes of known size, by name: (user, kind, bytes)
    sizes: dict
    #: volumes whose size Docker could not tell (not billed)
    unknown: list
    #: volumes whose user label the ledger cannot store, with why (not billed)
    unbillable: dict
    #: periods recorded
    periods: int
    #: how long it took, seconds
    duration_s: float


def storage_pass(
    docker_api, ledger, pricing, *, hub_id: str, helper_image: str, interval_s: float, now, log
) -> StoragePass:
    """Measure this hub's homes and snapshots and record their periods up to `now` (blocking)."""
    started = time.monotonic()
    measured, unbillable = [], {}
    found = measure_volumes(docker_api, hub_id=hub_id, helper_image=helper_image, log=log)
    for item in found:
        problem = name_problem(item.volume.user) if item.volume.user else "no user label"
        if problem:  # one bad label must not stop everyone else's billing
            unbillable[item.volume.name] = problem
        else:
            measured.append(item)
    ends = ledger.storage_ends(item.volume.name for item in measured)
    periods = plan_periods(
        measured,
        ends,
        now=now,
        interval=timedelta(seconds=interval_s),
        price_per_gb_month=pricing.storage_price,
        currency=pricing.currency,
    )
    recorded = ledger.add_storage_periods(periods, now)
    return StoragePass(
        measured_at=now,
        sizes={
            item.volume.name: (item.volume.user, item.volume.kind, item.size_bytes)
            for item in measured
            if item.size_bytes is not None
        },
        unknown=sorted(item.volume.name for item in measured if item.size_bytes is None),
        unbillable=unbillable,
        periods=recorded,
        duration_s=time.monotonic() - started,
    )


def report(
    result: StoragePass, *, log, size_warning: int | None, oversized: frozenset
) -> frozenset:
    """Log what a pass found; the homes over `size_warning` now.

    `oversized` is what the pass before returned: a home is warned about once,
    when it grows past the limit, not at every pass.
    """
    log.debug(
        "Storage: %d volume(s) measured, %d period(s) recorded in %.2fs",
        len(result.sizes),
        result.periods,
        result.duration_s,
    )
    if result.unknown:
        log.warning(
            "Storage: Docker cannot tell the size of %d volume(s), not billed "
            "(a volume plugin, or NFS or other options of the local driver?): %s",
            len(result.unknown),
            ", ".join(result.unknown[:10]),
        )
    for name, problem in sorted(result.unbillable.items()):
        log.warning("Storage: volume %s is not billed: its user label: %s", name, problem)
    now_over = frozenset(
        name
        for name, (_, kind, size) in result.sizes.items()
        if size_warning is not None and kind == "home" and size > size_warning
    )
    for name in sorted(now_over - oversized):
        user, _, size = result.sizes[name]
        log.warning(
            "Storage: the home %s of %s holds %d bytes, more than c.HomeVolumes.size_warning (%d)",
            name,
            user,
            size,
            size_warning,
        )
    return now_over


class MeasuresStorage:
    """The meter's storage measurement, mixed into
    :class:`~jupyter_gpu_meter.service.app.MeterService` (its Docker client, ledger,
    pricing, hub id, homes' settings, storage thread and clock)."""

    def storage_pass(self, now: datetime) -> StoragePass:
        """Measure this hub's homes and snapshots and record their periods up to `now`.

        Blocking (Docker and the ledger): the loop runs it in the storage
        thread; tests call it with the time they choose.
        """
        return storage_pass(
            self.docker_api,
            self.ledger,
            self.pricing,
            hub_id=self.hub_id,
            helper_image=self.home_volumes.helper_image,
            interval_s=self.storage_interval,
            now=now,
            log=self.log,
        )

    async def _measure_storage(self):
        result = await asyncio.get_running_loop().run_in_executor(
            self.storage_executor, self.storage_pass, self.clock()
        )
        self.oversized = report(
            result,
            log=self.log,
            size_warning=self.home_volumes.size_warning,
            oversized=self.oversized,
        )
