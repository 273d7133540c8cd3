"""Policies as pure functions on utilization traces, with a moved clock."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter.policies import (
    STOP,
    WARN,
    ServerState,
    activity_from_minutes,
    budget,
    format_duration,
    gpu_idle,
    keep_alive,
    max_age,
    track_idle,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)


def server(**kwargs):
    fields = {
        "user": "ada",
        "server": "",
        "container_id": "c1",
        "profile": "gpu-1",
        "gpu_uuids": ("GPU-a", "GPU-b"),
        "started_at": T0,
    }
    return ServerState(**{**fields, **kwargs})


def replay(trace, threshold=5):
    """Fold a trace of (minutes after T0, [util per GPU]) into idle_since."""
    idle_since = None
    for minute, utils in trace:
        idle_since = track_idle(
            idle_since, at=T0 + minute * MIN, utilizations=utils, threshold=threshold
        )
    return idle_since


def test_idle_since_is_the_start_of_the_current_idle_stretch():
    trace = [(0, [90, 80]), (1, [0, 2]), (2, [1, 0]), (3, [0, 0])]
    assert replay(trace) == T0 + 1 * MIN
    # one busy GPU is enough to make the server busy
    assert replay(trace + [(4, [0, 50])]) is None
    assert replay(trace + [(4, [0, 50]), (5, [0, 0])]) == T0 + 5 * MIN


def test_unknown_utilization_is_never_idle():
    assert replay([(0, [0, None])]) is None
    assert replay([(0, [])]) is None


def test_gpu_idle_stops_after_the_timeout_only():
    idle = server(idle_since=T0 + 10 * MIN)
    assert gpu_idle(server=idle, now=T0 + 39 * MIN, timeout=30 * MIN) is None
    decision = gpu_idle(server=idle, now=T0 + 40 * MIN, timeout=30 * MIN)
    assert (decision.policy, decision.action, decision.reason) == (
        "gpu-idle",
        STOP,
        "GPUs idle for 30 min",
    )


@pytest.mark.parametrize(
    "state, timeout",
    [
        (server(idle_since=None), 30 * MIN),  # busy
        (server(idle_since=T0, gpu_uuids=()), 30 * MIN),  # CPU only: not this policy's business
        (server(idle_since=T0), timedelta(0)),  # policy off
    ],
)
def test_gpu_idle_leaves_busy_cpu_and_disabled_alone(state, timeout):
    assert gpu_idle(server=state, now=T0 + 24 * 60 * MIN, timeout=timeout) is None


def test_max_age():
    assert max_age(server=server(), now=T0 + 119 * MIN, max_age=120 * MIN) is None
    decision = max_age(server=server(), now=T0 + 150 * MIN, max_age=120 * MIN)
    assert decision.action == STOP
    assert decision.reason == "running for 2 h 30 min, the most allowed is 2 h"
    assert max_age(server=server(), now=T0 + 10_000 * MIN, max_age=timedelta(0)) is None


def test_keep_alive_while_gpus_were_busy_recently():
    busy = server(busy_at=T0)
    assert keep_alive(server=busy, now=T0 + 4 * MIN, window=5 * MIN)
    assert not keep_alive(server=busy, now=T0 + 6 * MIN, window=5 * MIN)
    assert not keep_alive(server=server(busy_at=None), now=T0, window=5 * MIN)
    assert not keep_alive(server=server(busy_at=T0, gpu_uuids=()), now=T0, window=5 * MIN)


def spend(spent, limit="100", exhausted_since=None, now=T0, grace=5 * MIN):
    return budget(
        spent=Decimal(spent),
        limit=Decimal(limit),
        unit="USD",
        now=now,
        exhausted_since=exhausted_since,
        grace=grace,
        warn_fraction=Decimal("0.8"),
    )


def test_budget_warns_at_80_percent_and_stops_after_the_grace():
    assert spend("79.99") is None
    warning = spend("80")
    assert (warning.action, warning.reason) == (
        WARN,
        "80% of the budget used (80.00 of 100.00 USD)",
    )
    used_up = spend("100.5")
    assert used_up.action == WARN
    assert used_up.reason == ("budget used up (100.50 of 100.00 USD): GPU servers stop after 5 min")
    assert spend("100.5", exhausted_since=T0, now=T0 + 4 * MIN).action == WARN
    stop = spend("100.5", exhausted_since=T0, now=T0 + 5 * MIN)
    assert (stop.action, stop.reason) == (STOP, "budget used up (100.50 of 100.00 USD)")


def test_a_zero_budget_is_used_up():
    assert spend("0", limit="0").action == WARN


@pytest.mark.parametrize(
    "duration, text",
    [
        (timedelta(seconds=42), "42 s"),
        (30 * MIN, "30 min"),
        (60 * MIN, "1 h"),
        (90 * MIN, "1 h 30 min"),
        (timedelta(days=1, minutes=5), "1 d 5 min"),
    ],
)
def test_durations_read_like_a_person_writes_them(duration, text):
    assert format_duration(duration) == text


def test_gpu_lost_stops_the_server_that_holds_it():
    from jupyter_gpu_meter.policies import gpu_lost

    assert gpu_lost(server=server(), unhealthy={"GPU-z": "GPU is lost"}) is None
    decision = gpu_lost(server=server(), unhealthy={"GPU-b": "GPU is lost (nvmlDeviceGetUUID)"})
    assert (decision.policy, decision.action) == ("gpu-health", STOP)
    assert decision.reason == "GPU unhealthy (GPU-b: GPU is lost (nvmlDeviceGetUUID))"


# --- cluster mode: activity from per-minute rollups -------------------------------------


def minutes_activity(rows, now, gpus=2, since=T0, threshold=5):
    """(idle_since, busy_at) from rows of (minutes after T0, util_max, GPUs read)."""
    minutes = [(T0 + minute * MIN, top, count) for minute, top, count in rows]
    return activity_from_minutes(minutes, gpus=gpus, since=since, now=now, threshold=threshold)


def test_idle_since_is_the_first_minute_of_the_trailing_idle_run():
    rows = [(0, 90, 2), (1, 3, 2), (2, 0, 2), (3, 4, 2)]
    assert minutes_activity(rows, T0 + 3 * MIN + SEC) == (T0 + 1 * MIN, T0 + 1 * MIN)
    # a busy minute ends the run; busy_at is its end, at most now
    assert minutes_activity(rows + [(4, 5, 2)], T0 + 4 * MIN + SEC) == (None, T0 + 4 * MIN + SEC)
    assert minutes_activity(rows + [(4, 5, 2)], T0 + 5 * MIN) == (None, T0 + 5 * MIN)


def test_the_same_threshold_as_each_sample():
    rows = [(0, 5, 2), (1, 4, 2)]
    assert minutes_activity(rows, T0 + 2 * MIN, threshold=5) == (T0 + 1 * MIN, T0 + 1 * MIN)
    assert minutes_activity(rows, T0 + 2 * MIN, threshold=6) == (T0, None)


def test_a_minute_without_every_gpus_reading_is_never_idle():
    late = [(0, 0, 2), (1, 0, 2), (2, 0, 2)]  # then nothing for minute 3: the agent is late
    assert minutes_activity(late, T0 + 4 * MIN + SEC) == (None, None)
    half = [(0, 0, 2), (1, 0, 1), (2, 0, 2)]  # one GPU unread in minute 1
    assert minutes_activity(half, T0 + 2 * MIN + SEC) == (T0 + 2 * MIN, None)
    assert minutes_activity([], T0 + 10 * MIN) == (None, None)


def test_the_current_minute_waits_for_its_first_reading_then_is_unknown():
    rows = [(0, 0, 2), (1, 0, 2)]
    # 29 s into minute 2 without its reading: not judged yet
    assert minutes_activity(rows, T0 + 2 * MIN + 29 * SEC) == (T0, None)
    # 30 s in: unknown, never idle
    assert minutes_activity(rows, T0 + 2 * MIN + 30 * SEC) == (None, None)
    # with its reading it counts at once
    assert minutes_activity(rows + [(2, 0, 2)], T0 + 2 * MIN + 30 * SEC) == (T0, None)


def test_idle_since_is_never_before_the_server_started():
    started = T0 + 20 * SEC  # in minute 0, whose reading covers only its last 40 s
    rows = [(0, 0, 1), (1, 0, 1)]
    assert minutes_activity(rows, T0 + 2 * MIN, gpus=1, since=started) == (started, None)
    # a run older than `since` is cut at `since` (how far back the policies look)
    assert minutes_activity(rows, T0 + 2 * MIN, gpus=1, since=T0 + MIN) == (T0 + MIN, None)
