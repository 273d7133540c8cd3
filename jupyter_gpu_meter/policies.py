"""Policies: when to stop a server, and when to vouch for a busy one. Pure decisions.

Each policy is a plain callable with keyword-only arguments, like
jupyterhub-idle-culler's ``cull_arbiter_hook``: it gets what the meter knows
about one server and returns a :class:`Decision` or None. An admin replaces
one with ``c.Policies.gpu_idle_policy = my_function`` (sync or async); extra
keyword arguments may be added in later versions, so accept ``**kwargs``.
Acting on decisions (the hub's REST API) lives in the service, not here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from .usage import format_amount, format_duration

STOP = "stop"
WARN = "warn"


@dataclass(frozen=True)
class ServerState:
    """One running server, as the meter sees it."""

    user: str
    server: str
    container_id: str
    profile: str
    gpu_uuids: tuple[str, ...]
    started_at: datetime
    #: since when every GPU of the server has been below the idle threshold; None: busy or unknown
    idle_since: datetime | None = None
    #: the last time a GPU of the server was at or above the threshold; None: never seen busy
    busy_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """What a policy wants done with a server, and why (shown to the user and logged)."""

    policy: str
    action: str
    reason: str


def track_idle(
    idle_since: datetime | None,
    *,
    at: datetime,
    utilizations: Sequence[int | None],
    threshold: float,
) -> datetime | None:
    """The new `idle_since` after a reading at `at` of a server's GPU utilizations (percent).

    Idle means every GPU below `threshold`. A GPU whose utilization is unknown
    (None: NVML error, no sampling) counts as busy: not knowing is never a
    reason to stop a server.
    """
    if utilizations and all(u is not None and u < threshold for u in utilizations):
        return idle_since or at
    return None


#: a minute is one step of GPU activity in cluster mode (the agents' rollups)
MINUTE = timedelta(minutes=1)
#: cluster mode: how long into a minute its rollup may be missing before the minute
#: counts as unknown (agents write the current minute every ``flush_interval``, 5 s)
ROLLUP_GRACE = timedelta(seconds=30)


def activity_from_minutes(
    minutes: Iterable,
    *,
    gpus: int,
    since: datetime,
    now: datetime,
    threshold: float,
    grace: timedelta = ROLLUP_GRACE,
) -> tuple[datetime | None, datetime | None]:
    """A server's (idle_since, busy_at) from its per-minute rollups (cluster mode).

    `minutes` holds each minute with a reading, from `since` (the server's start,
    or how far back the policies look) to `now`, with the highest utilization
    of the server's `gpus` GPUs and how many of them have a reading
    (:class:`~jupyter_gpu_meter.ledger.MinuteBusy`, or any (minute, util_max,
    gpus) tuple). The same meaning and threshold as :func:`track_idle` on each
    sample: a minute is idle when every GPU stayed below `threshold` all
    minute; busy when one reached it.

    A minute without a reading of every GPU is unknown, and unknown is never
    idle: it ends the idle run (the agent is late; never stop a server for
    that), and vouches for nothing either. The current minute is not judged
    before its first reading until `grace` into it. `idle_since` is the start
    of the first idle minute of the trailing idle run (never before `since`);
    `busy_at` the end of the last busy minute (at most `now`): the reading is
    somewhere in it. Pure.
    """
    readings = {minute: (util_max, count) for minute, util_max, count in minutes}
    current = now.replace(second=0, microsecond=0)
    minute = since.replace(second=0, microsecond=0)
    idle_since = busy_at = None
    while minute <= current:
        util_max, count = readings.get(minute, (None, 0))
        if count < gpus or util_max is None:
            if not (minute == current and now - minute < grace):
                idle_since = None  # unknown
        elif util_max >= threshold:
            idle_since, busy_at = None, min(minute + MINUTE, now)
        elif idle_since is None:
            idle_since = max(minute, since)
        minute += MINUTE
    return idle_since, busy_at


def idle_stop_at(server: ServerState, timeout: timedelta) -> datetime | None:
    """When :func:`gpu_idle` stops `server` if its GPUs stay idle: `timeout` after they
    all went idle. None: never (a CPU-only server, the policy off, GPUs busy now)."""
    if not server.gpu_uuids or timeout <= timedelta(0) or server.idle_since is None:
        return None
    return server.idle_since + timeout


def gpu_idle(
    *, server: ServerState, now: datetime, timeout: timedelta, **kwargs
) -> Decision | None:
    """Stop a GPU server whose GPUs have all been idle for `timeout` (0: never)."""
    stop_at = idle_stop_at(server, timeout)
    if stop_at is None or now < stop_at:
        return None
    return Decision("gpu-idle", STOP, f"GPUs idle for {format_duration(now - server.idle_since)}")


def gpu_lost(*, server: ServerState, unhealthy: dict[str, str], **kwargs) -> Decision | None:
    """Stop a server one of whose GPUs is unhealthy (lost, NVML errors).

    `unhealthy` maps GPU UUIDs to what is wrong. The user's work cannot go on
    on that GPU, and billing it would charge for a GPU that is gone; the
    spawner never hands out an unhealthy GPU again until it recovers.
    """
    problems = [f"{uuid}: {unhealthy[uuid]}" for uuid in server.gpu_uuids if uuid in unhealthy]
    if not problems:
        return None
    return Decision("gpu-health", STOP, "GPU unhealthy (" + "; ".join(problems) + ")")


def max_age_stop_at(server: ServerState, max_age: timedelta) -> datetime | None:
    """When :func:`max_age` stops `server`: `max_age` after it started; None: never (0)."""
    if max_age <= timedelta(0):
        return None
    return server.started_at + max_age


def max_age(*, server: ServerState, now: datetime, max_age: timedelta, **kwargs) -> Decision | None:
    """Stop a server that has run for `max_age` (0: never)."""
    stop_at = max_age_stop_at(server, max_age)
    if stop_at is None or now < stop_at:
        return None
    age = now - server.started_at
    return Decision(
        "max-age",
        STOP,
        f"running for {format_duration(age)}, the most allowed is {format_duration(max_age)}",
    )


def keep_alive(*, server: ServerState, now: datetime, window: timedelta, **kwargs) -> bool:
    """Report activity for a server whose GPUs were busy within `window`.

    So an idle culler that only sees browser traffic keeps a training run alive.
    """
    return bool(server.gpu_uuids and server.busy_at and now - server.busy_at <= window)


def budget_stop_at(exhausted_since: datetime, grace: timedelta) -> datetime:
    """When :func:`budget` stops the servers that spend from a budget used up since
    `exhausted_since`: `grace` later."""
    return exhausted_since + grace


def budget(
    *,
    spent: Decimal,
    limit: Decimal,
    unit: str,
    now: datetime,
    exhausted_since: datetime | None,
    grace: timedelta,
    warn_fraction: Decimal,
    **kwargs,
) -> Decision | None:
    """Warn at `warn_fraction` of a budget; stop `grace` after it is used up.

    `unit` is the currency code or "GPU-hours"; `exhausted_since` is when the
    meter first saw the budget used up (None: not yet).
    """
    if limit <= 0:
        used_up = True
    else:
        used_up = spent >= limit
    used = f"{format_amount(spent, unit, code=False)} of {format_amount(limit, unit)}"
    if used_up:
        if exhausted_since is not None and now >= budget_stop_at(exhausted_since, grace):
            return Decision("budget", STOP, f"budget used up ({used})")
        return Decision(
            "budget",
            WARN,
            f"budget used up ({used}): GPU servers stop after {format_duration(grace)}",
        )
    if spent >= limit * warn_fraction:
        return Decision("budget", WARN, f"{int(spent * 100 / limit)}% of the budget used ({used})")
    return None
