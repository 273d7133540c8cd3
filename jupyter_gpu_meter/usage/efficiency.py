"""How much of what a session paid for did work, and the energy its GPUs used. Pure.

Plain data in (a session, the ledger's
:class:`~jupyter_gpu_meter.ledger.SessionEfficiency`, a `now`), plain data and
finished words out. The pages, the API, the CSV and the report all read a
session's busy share and energy through :func:`session_efficiency`, and write
them through :func:`format_share` and :func:`format_energy`.

- *billed* GPU-seconds: GPUs × the session's exact time (what its GPU time is charged for);
- *busy* GPU-seconds: each sample's busy % (SM activity where the GPU has GPM, else
  utilization) × the time it stands for, added up by the ledger;
- *idle* GPU-seconds: billed − busy, never negative;
- *busy share*: busy / billed, from 0 to 1;
- *energy*: the GPUs' energy counters' increase while the session held them, in kWh,
  charged at the energy price in force when the session started.

Each is None ("–" for people) where it is unknown: no GPU sample was ever taken
(GPU sampling off, a CPU-only server), or no GPU reported an energy counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal

from .. import pricing
from .dates import format_duration, isoformat
from .money import decimal_string, format_quantity, money

_MS = Decimal(1000)
_MS_PER_HOUR = Decimal(3_600_000)
#: the precision of Python's default context, whatever the caller's is
_CONTEXT = Context(prec=28, rounding=ROUND_HALF_UP)
#: places of kWh in the API and the CSV: 10**-9 kWh is a millijoule's order (3.6 mJ)
ENERGY_PLACES = 9
#: places of a busy share in the API and the CSV (0.7312 is 73.12 %)
SHARE_PLACES = 4


def format_share(fraction) -> str:
    """A busy share for people: ``73%`` (whole percent, half up); "–" when unknown."""
    if fraction is None:
        return "–"
    percent = (Decimal(str(fraction)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return f"{percent}%"


def format_energy(kwh) -> str:
    """Energy for people: ``1.234 kWh`` (three places: watt-hours); "–" when unknown."""
    return "–" if kwh is None else f"{format_quantity(Decimal(kwh), 3)} kWh"


def busy_share(busy_seconds: Decimal | None, billed_seconds: Decimal) -> float | None:
    """busy / billed, clipped to 0..1; None when busy is unknown or nothing was billed."""
    if busy_seconds is None or billed_seconds <= 0:
        return None
    return float(min(max(busy_seconds / billed_seconds, Decimal(0)), Decimal(1)))


def idle(billed: Decimal, busy: Decimal | None) -> Decimal | None:
    """billed − busy, never negative; None when busy is unknown."""
    return None if busy is None else max(billed - busy, Decimal(0))


def energy_price(price) -> Decimal:
    """The energy price per kWh of a price snapshot (0 for one taken before energy had one)."""
    return getattr(price, "energy_price_per_kwh", Decimal(0))


@dataclass(frozen=True)
class Efficiency:
    """One session's efficiency and energy (of the whole session, running ones so far)."""

    billed_gpu_seconds: Decimal
    busy_gpu_seconds: Decimal | None
    #: peak memory of any one of its GPUs, bytes
    memory_max_bytes: int | None
    energy_kwh: Decimal | None
    #: at the session's energy price snapshot, exact; 0 when the energy is unknown
    energy_charge: Decimal
    currency: str
    #: "utilization", "sm-activity", "mixed", or "" without a sample
    busy_source: str = ""

    @property
    def idle_gpu_seconds(self) -> Decimal | None:
        return idle(self.billed_gpu_seconds, self.busy_gpu_seconds)

    @property
    def busy_share(self) -> float | None:
        return busy_share(self.busy_gpu_seconds, self.billed_gpu_seconds)

    def to_json(self) -> dict:
        """The API's fields: exact decimal strings (null when unknown), ``*_text`` for people."""
        share = self.busy_share
        return {
            "billed_gpu_seconds": decimal_string(self.billed_gpu_seconds),
            "busy_gpu_seconds": _exact(self.busy_gpu_seconds),
            "idle_gpu_seconds": _exact(self.idle_gpu_seconds),
            "busy_share": None if share is None else round(share, SHARE_PLACES),
            "busy_share_text": format_share(share),
            "busy_source": self.busy_source,
            "energy_kwh": _exact(self.energy_kwh, ENERGY_PLACES),
            "energy_kwh_text": format_energy(self.energy_kwh),
            "energy_charge": money(self.energy_charge, self.currency),
            "memory_max_bytes": self.memory_max_bytes,
        }


def _exact(value: Decimal | None, places: int = 6) -> str | None:
    return None if value is None else decimal_string(value, places)


def session_efficiency(session, measured, *, now: datetime) -> Efficiency:
    """`session`'s :class:`Efficiency` at `now` from what the ledger `measured` of it
    (a :class:`~jupyter_gpu_meter.ledger.SessionEfficiency`, or None: nothing measured)."""
    billed = session.gpu_seconds(now)
    busy_ms = getattr(measured, "busy_gpu_ms", None)
    energy_mj = getattr(measured, "energy_mj", None)
    price = energy_price(session.price)
    known = busy_ms is not None and session.gpu_count
    return Efficiency(
        billed_gpu_seconds=billed,
        busy_gpu_seconds=_CONTEXT.divide(Decimal(busy_ms), _MS) if known else None,
        memory_max_bytes=getattr(measured, "memory_max_bytes", None),
        energy_kwh=None if energy_mj is None else pricing.energy_kwh(energy_mj),
        energy_charge=Decimal(0) if energy_mj is None else pricing.energy_charge(energy_mj, price),
        currency=session.price.currency,
        busy_source=getattr(measured, "busy_source", "") or "",
    )


def busy_hours(busy_gpu_ms: int | None) -> Decimal | None:
    """Busy GPU-milliseconds as GPU-hours (exact to 28 digits); None stays None."""
    return None if busy_gpu_ms is None else _CONTEXT.divide(Decimal(busy_gpu_ms), _MS_PER_HOUR)


def add_known(a, b):
    """a + b where None is unknown: unknown only when both are."""
    if a is None:
        return b
    return a if b is None else a + b


# --- process groups: where a session's GPU time went ------------------------------------


def processes_json(groups) -> list[dict]:
    """A session's process groups (:class:`~jupyter_gpu_meter.ledger.ProcessGroupUsage`,
    the busiest first) as the API gives them: GPU-seconds present and busy, exact."""
    return [
        {
            "group": g.process_group,
            "gpu_seconds": decimal_string(_CONTEXT.divide(Decimal(g.present_ms), _MS)),
            "busy_gpu_seconds": decimal_string(_CONTEXT.divide(Decimal(g.busy_ms), _MS)),
            "memory_max_bytes": g.memory_max_bytes,
            "first_seen": isoformat(g.first_seen),
            "last_seen": isoformat(g.last_seen),
        }
        for g in groups
    ]


def format_processes(groups, shown: int = 3) -> str:
    """Where a session's GPU time went, for people: ``python 58 min, torchrun 2 min``
    (GPU-time each group held a GPU, the busiest first), ``+ 2 more`` past `shown`;
    "" without any."""
    groups = list(groups)
    parts = [f"{g.process_group} {format_duration(g.present_ms / 1000)}" for g in groups[:shown]]
    if len(groups) > shown:
        parts.append(f"+ {len(groups) - shown} more")
    return ", ".join(parts)
