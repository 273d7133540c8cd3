"""When the policies would stop a server (jupyter_gpu_meter.deadlines): pure, from the
policies' own rules. Through the API: test_server_status.py."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter import policies
from jupyter_gpu_meter.budgets import budget_status
from jupyter_gpu_meter.deadlines import (
    BUDGET,
    IDLE,
    MAX_AGE,
    Deadline,
    budget_deadline,
    runs_out_at,
    server_deadlines,
    spend_rate,
)
from jupyter_gpu_meter.policies import ServerState
from jupyter_gpu_meter.pricing import Pricing
from tests.test_budgets import budget, session

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
H100 = "NVIDIA H100 80GB HBM3"
PRICING = Pricing(prices={H100: "2.00"}, cpu_price="0", currency="USD")
GPU, CPU = PRICING.snapshot(H100, 1), PRICING.snapshot("", 0)


def server(*, gpus=("GPU-0",), started=NOW - 60 * MIN, idle_since=None):
    return ServerState("ada", "", "c" * 64, "", gpus, started, idle_since)


def status(amount="10", unit="money", spent_hours=1):
    sessions = [session(NOW - spent_hours * 60 * MIN, NOW)] if spent_hours else []
    currency = "USD" if unit == "money" else None
    return budget_status(budget(amount=amount, unit=unit, currency=currency), [], sessions, now=NOW)


def test_each_deadline_is_when_its_policy_decides_to_stop():
    idle = server(idle_since=NOW - 50 * MIN)
    found = server_deadlines(idle, idle_timeout=60 * MIN, max_age=24 * 60 * MIN)
    assert found == [Deadline(IDLE, NOW + 10 * MIN), Deadline(MAX_AGE, NOW + 23 * 60 * MIN)]
    # at each deadline, and not a microsecond before, the policy itself stops the server
    for deadline, decide in zip(
        found,
        (
            lambda now: policies.gpu_idle(server=idle, now=now, timeout=60 * MIN),
            lambda now: policies.max_age(server=idle, now=now, max_age=24 * 60 * MIN),
        ),
        strict=True,
    ):
        assert decide(deadline.at).action == policies.STOP
        assert decide(deadline.at - timedelta(microseconds=1)) is None


def test_no_deadline_where_the_policy_never_stops():
    # busy GPUs, a CPU-only server, policies off (0), or replaced by an admin's own (None)
    assert server_deadlines(server(), idle_timeout=60 * MIN, max_age=None) == []
    cpu = server(gpus=(), idle_since=NOW)
    assert server_deadlines(cpu, idle_timeout=60 * MIN, max_age=timedelta(0)) == []
    idle = server(idle_since=NOW)
    assert server_deadlines(idle, idle_timeout=timedelta(0), max_age=None) == []
    assert server_deadlines(idle, idle_timeout=None, max_age=None) == []


def test_the_text_says_how_long_and_warns_within_the_lead_time():
    deadline = Deadline(IDLE, NOW + 9 * MIN + timedelta(seconds=30))
    assert deadline.to_json(NOW, 15 * MIN) == {
        "policy": "idle",
        "at": "2026-11-20T12:09:30Z",
        "in_seconds": 570,
        "warn": True,
        "text": "idle stop in 9 min",
    }
    assert deadline.to_json(NOW, 5 * MIN)["warn"] is False
    due = Deadline(BUDGET, NOW - MIN).to_json(NOW, timedelta(0))
    assert due["in_seconds"] == 0 and due["warn"] is True and due["text"] == "budget stop now"
    projected = Deadline(BUDGET, NOW + 90 * MIN, projected=True).to_json(NOW, MIN)
    assert projected["text"] == "budget stop in ~1 h 30 min"


def test_a_budget_runs_out_at_the_rate_of_what_spends_from_it():
    money = status("10")  # 2 of 10 USD spent
    assert spend_rate(money, [GPU, GPU, CPU, None]) == Decimal("4.00")
    assert runs_out_at(money, Decimal("4.00"), NOW) == NOW + 120 * MIN
    assert runs_out_at(money, Decimal(0), NOW) is None  # nothing spends from it
    assert runs_out_at(money, Decimal("0.000001"), NOW) is None  # beyond a century
    assert runs_out_at(status("1"), Decimal("4.00"), NOW) == NOW  # used up already
    gpu_hours = status("5", unit="gpu-hours")  # 1 of 5 GPU-hours used
    assert spend_rate(gpu_hours, [GPU, GPU, CPU]) == 2
    assert runs_out_at(gpu_hours, Decimal(2), NOW) == NOW + 120 * MIN


def test_the_budget_stops_spending_servers_a_grace_after_it_runs_out():
    grace = 5 * MIN
    money = status("10")
    runs_out = NOW + 120 * MIN
    found = budget_deadline(money, GPU, runs_out=runs_out, exhausted_since=None, grace=grace)
    assert found == Deadline(BUDGET, runs_out + grace, projected=True)
    # a free CPU-only server does not spend from it: the budget policy leaves it running
    assert budget_deadline(money, CPU, runs_out=runs_out, exhausted_since=None, grace=grace) is None
    assert budget_deadline(money, GPU, runs_out=None, exhausted_since=None, grace=grace) is None
    # used up: grace after the meter first saw it (or, not seen yet, after now)
    used_up = status("1")
    seen = NOW - 2 * MIN
    found = budget_deadline(used_up, None, runs_out=NOW, exhausted_since=seen, grace=grace)
    assert found == Deadline(BUDGET, seen + grace)
    decision = policies.budget(
        spent=used_up.spent,
        limit=used_up.limit,
        unit="USD",
        now=found.at,
        exhausted_since=seen,
        grace=grace,
        warn_fraction=Decimal("0.8"),
    )
    assert decision.action == policies.STOP
    found = budget_deadline(used_up, GPU, runs_out=NOW, exhausted_since=None, grace=grace)
    assert found == Deadline(BUDGET, NOW + grace)


@pytest.mark.parametrize("seconds", [0, 59, 3600])
def test_in_seconds_is_whole_seconds_never_negative(seconds):
    deadline = Deadline(MAX_AGE, NOW + timedelta(seconds=seconds, microseconds=999_999))
    assert deadline.to_json(NOW, timedelta(0))["in_seconds"] == seconds
