"""One session's usage, and GPU-hours per day: the history, the running list, the chart. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from .. import pricing
from ..clock import as_utc
from .dates import day_start, format_duration, format_time, isoformat
from .efficiency import Efficiency, format_processes, processes_json, session_efficiency
from .money import decimal_string, format_rate, money
from .totals import clip

_HOUR = Decimal(3600)
_DAY = timedelta(days=1)
#: days of the user page's chart
DAILY_DAYS = 30


def daily_start(now: datetime, days: int = DAILY_DAYS) -> datetime:
    """Midnight UTC of the first of the `days` days up to and including `now`'s."""
    return day_start(as_utc(now).date() - timedelta(days=days - 1))


def daily_gpu_hours(
    sessions: Iterable, *, now: datetime, days: int = DAILY_DAYS
) -> list[tuple[date, Decimal]]:
    """GPU-hours per UTC day for the `days` days up to and including today.

    A session that runs across midnight counts on each day for its time on
    that day; running sessions count up to `now`.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days!r}")
    today = as_utc(now).date()
    first = daily_start(now, days).date()
    hours = {first + timedelta(days=i): Decimal(0) for i in range(days)}
    for session in sessions:
        if not session.price.gpus:
            continue
        day = first
        while day <= today:
            span = clip(session, now=now, since=day_start(day), until=day_start(day) + _DAY)
            if span is not None:
                hours[day] += pricing.gpu_seconds(session.price, *span) / _HOUR
            day += _DAY
    return sorted(hours.items())


def format_percent(value: float | None) -> str:
    """A utilization for people: ``73%`` (whole percent); "–" when unknown."""
    return "–" if value is None else f"{value:.0f}%"


def average_utilization(minutes: Iterable) -> float | None:
    """The sample-weighted mean utilization (%) over every GPU and minute; None without
    samples (no GPU, or GPU sampling off).

    `minutes`: the session's :class:`~jupyter_gpu_meter.ledger.MinuteUtilization`,
    its GPUs merged per minute (:meth:`~jupyter_gpu_meter.ledger.Ledger.utilization_of`).
    """
    samples = weighted = 0
    for minute in minutes:
        samples += minute.samples
        weighted += minute.util_sum
    return weighted / samples if samples else None


def utilization_series(minutes: Iterable, *, points: int = 60) -> list[float]:
    """Mean utilization (%) per minute over the session's GPUs, at most `points` values
    (neighbouring minutes averaged, sample-weighted). Minutes without samples are skipped."""
    counted = [m for m in sorted(minutes, key=lambda m: m.minute) if m.samples]
    if not counted:
        return []
    size = -(-len(counted) // max(points, 1))  # minutes per point, rounded up
    series = []
    for i in range(0, len(counted), size):
        group = counted[i : i + size]
        series.append(sum(m.util_sum for m in group) / sum(m.samples for m in group))
    return series


def what_ran(session) -> dict:
    """Whose server ran what, and where: the fields the API's sessions and the CSV's lines
    share. ``node``: the cluster node it ran on ("" on one host)."""
    return {
        "user": session.user,
        "server": session.server,
        "profile": session.profile,
        "image": session.image,
        "gpu_model": session.gpu_model,
        "gpus": session.gpu_count,
        "node": session.node,
    }


@dataclass(frozen=True)
class SessionUsage:
    """One session with what it used, for the history and the running list."""

    session: object
    duration_s: float
    gpu_hours: Decimal
    charge: Decimal
    utilization_avg: float | None = None
    utilization: tuple[float, ...] = ()
    #: busy share, energy and peak memory; None where the ledger was not asked
    efficiency: Efficiency | None = None
    #: its process groups (:class:`~jupyter_gpu_meter.ledger.ProcessGroupUsage`), busiest first
    processes: tuple = ()

    @property
    def processes_text(self) -> str:
        """Where its GPU time went: ``python 58 min, torchrun 2 min`` ("" without any)."""
        return format_processes(self.processes)

    def to_json(self) -> dict:
        s = self.session
        return {
            "id": s.id,
            **what_ran(s),
            "gpu_uuids": list(s.gpu_uuids),
            "started_at": isoformat(s.started_at),
            "started_at_text": format_time(s.started_at),
            "ended_at": isoformat(s.ended_at),
            "end_reason": s.end_reason,
            "running": s.running,
            "duration_s": round(self.duration_s, 6),
            "duration_text": format_duration(self.duration_s),
            "gpu_hours": decimal_string(self.gpu_hours),
            "charge": money(self.charge, s.price.currency),
            "price_per_hour": money(s.price.hourly_rate, s.price.currency),
            "price_text": format_rate(s.price.hourly_rate, s.price.currency),
            "utilization_avg": None
            if self.utilization_avg is None
            else round(self.utilization_avg, 2),
            "utilization_avg_text": format_percent(self.utilization_avg),
            "utilization": [round(value, 1) for value in self.utilization],
            **(self.efficiency.to_json() if self.efficiency is not None else {}),
            "processes": processes_json(self.processes),
            "processes_text": self.processes_text,
        }


def session_usage(
    session, *, now: datetime, minutes: Sequence | None = None, measured=None, processes=()
) -> SessionUsage:
    """`session` as it stands at `now` (the whole session, not clipped), with its
    utilization from `minutes` (see :func:`average_utilization`) when given, and
    its busy share and energy from what the ledger `measured` of it (a
    :class:`~jupyter_gpu_meter.ledger.SessionEfficiency`, or None: nothing yet) and
    its `processes` (process groups, the busiest first)."""
    return SessionUsage(
        session,
        session.duration(now).total_seconds(),
        session.gpu_seconds(now) / _HOUR,
        session.charge(now),
        average_utilization(minutes) if minutes is not None else None,
        tuple(utilization_series(minutes)) if minutes is not None else (),
        session_efficiency(session, measured, now=now),
        tuple(processes),
    )
