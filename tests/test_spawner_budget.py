"""The spawner's budget check priced as the bill prices a start; the budget settings;
the one ledger a hub process reads budgets through. No Docker, no hub."""

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from traitlets.config import Config

from jupyter_gpu_meter.budgets import Budgets, budget_status
from jupyter_gpu_meter.ledger import Ledger, LedgerSchemaError
from jupyter_gpu_meter.pricing import PriceSnapshot, charge
from jupyter_gpu_meter.service.policy_runner import Policies
from jupyter_gpu_meter.spawner_budget import (
    budget_left,
    read_budget_status,
    refusal,
    shared_ledger,
    start_cost,
)
from tests.metering import set_money_budget
from tests.test_budgets import budget

H100 = "NVIDIA H100 80GB HBM3"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def status(amount, *, unit="money", currency="USD"):
    """A new user's status: nothing spent yet this month."""
    return budget_status(budget(amount=amount, unit=unit, currency=currency), [], [], now=NOW)


def price(per_gpu_hour="3.60", *, gpus=1, increment=60, minimum="0", cpu="0", currency="USD"):
    return PriceSnapshot(
        gpu_model=H100 if gpus else "",
        gpus=gpus,
        price_per_gpu_hour=Decimal(per_gpu_hour),
        cpu_price_per_hour=Decimal(cpu),
        currency=currency,
        billing_increment_s=increment,
        minimum_charge=Decimal(minimum),
    )


def refused(budget, at, minimum_seconds=0):
    return refusal(budget, at, minimum_seconds=minimum_seconds, now=NOW, what=f"1 × {H100}")


def test_a_start_whose_first_increment_costs_more_than_is_left_is_refused():
    # the case of issue #11: 0.05 left, 3.60 per GPU-hour, billed per started minute
    # (0.06): the budget policy stopped such a server 7 s after the spawner let it start
    message = refused(status("0.05"), price())
    assert message == (
        f"your budget (user ada) has 0.05 USD left this period: not enough to start 1 × {H100}, "
        "whose first 1 min costs 0.06 USD"
    )
    # the cost is what the bill charges for it: pricing's own charge, increment included
    assert start_cost(status("0.05"), price(), 0, now=NOW) == charge(
        price(), NOW, NOW + timedelta(seconds=1)
    )
    # billed per second, the same 0.05 pays for its first second (and 50 s)
    assert refused(status("0.05"), price(increment=1)) is None
    assert refused(status("0.05"), price(increment=1), minimum_seconds=50) is None
    assert "whose first 51 s costs 0.05 USD" in refused(
        status("0.05"), price(increment=1), minimum_seconds=51
    )


def test_the_minimum_start_is_billed_in_whole_increments_and_exactly_enough_will_do():
    assert refused(status("3.60"), price(), minimum_seconds=3600) is None
    assert refused(status("3.60"), price(), minimum_seconds=3601).endswith(
        "whose first 1 h 1 min costs 3.66 USD"
    )
    assert refused(status("3.59"), price(), minimum_seconds=3540) is None
    assert refused(status("3.59"), price(), minimum_seconds=3541) == (
        f"your budget (user ada) has 3.59 USD left this period: not enough to start 1 × {H100}, "
        "whose first 1 h costs 3.60 USD"
    )


def test_the_minimum_charge_counts():
    message = refused(status("0.50"), price(increment=1, minimum="1.00"))
    assert message.endswith("whose first 1 s costs 1.00 USD")
    assert refused(status("1.00"), price(increment=1, minimum="1.00")) is None


def test_a_used_up_budget_refuses_and_a_server_it_does_not_pay_for_starts():
    used_up = status("0")
    assert "has 0.00 USD left" in refused(used_up, price())
    assert refused(used_up, price(gpus=0)) is None  # a free CPU-only server
    assert refused(used_up, price(currency="EUR")) is None  # charged to no USD budget
    assert "costs 0.01 USD" in refused(used_up, price(gpus=0, cpu="0.36"))


def test_gpu_hour_budgets_count_gpu_time_not_increments():
    hours = status("1", unit="gpu-hours")
    assert refused(hours, price(gpus=2), minimum_seconds=1800) is None
    assert refused(hours, price(gpus=2), minimum_seconds=1801) == (
        f"your budget (user ada) has 1.00 GPU-hours left this period: not enough to start "
        f"1 × {H100}, whose first 30 min costs 1.00 GPU-hours"
    )
    assert refused(status("0", unit="gpu-hours"), price(gpus=0, cpu="9")) is None


def test_the_forms_budget_text_in_the_currencys_minor_unit():
    assert budget_left(None) is None
    assert budget_left(status("15")) == "15.00 of 15.00 USD (since Nov 1, UTC)"
    assert budget_left(status("1500", currency="JPY")) == "1,500 of 1,500 JPY (since Nov 1, UTC)"


# --- the settings ------------------------------------------------------------------


def test_budgets_settings_and_their_defaults():
    assert (Budgets().grace, Budgets().warn_fraction, Budgets().minimum_start) == (300, 0.8, 3600)
    config = Config({"Budgets": {"grace": 10, "warn_fraction": 0.5, "minimum_start": 60}})
    budgets = Budgets(config=config)
    assert (budgets.grace, budgets.warn_fraction, budgets.minimum_start) == (10, 0.5, 60)
    with pytest.raises(Exception, match="should not be less than 0"):
        Budgets(config=Config({"Budgets": {"minimum_start": -1}}))


def test_the_old_policies_names_still_apply_with_a_warning_naming_the_new(caplog):
    old = Config(
        {"Policies": {"budget_grace": 2, "budget_warn_fraction": 0.9, "budget_minimum_start": 5}}
    )
    with caplog.at_level(logging.WARNING):
        budgets = Budgets(config=old)
        assert (budgets.grace, budgets.warn_fraction, budgets.minimum_start) == (2, 0.9, 5)
    warnings = sorted(record.getMessage() for record in caplog.records)
    assert warnings == [
        "c.Policies.budget_grace is deprecated: use c.Budgets.grace (same meaning) instead",
        "c.Policies.budget_minimum_start is deprecated: use c.Budgets.minimum_start "
        "(same meaning) instead",
        "c.Policies.budget_warn_fraction is deprecated: use c.Budgets.warn_fraction "
        "(same meaning) instead",
    ]
    # the meter reads them through its Policies, the spawner through its own Budgets
    assert Policies(config=old).budgets.grace == 2
    # the new name wins over the old one
    both = Config({"Policies": {"budget_grace": 2}, "Budgets": {"grace": 7}})
    assert Policies(config=both).budgets.grace == 7


def test_the_hub_process_imports_nothing_of_the_meter_service():
    code = textwrap.dedent(
        """
        import sys
        import jupyter_gpu_meter.spawner
        from jupyter_gpu_meter import GPUDockerSpawner
        GPUDockerSpawner().budgets.minimum_start
        found = sorted(m for m in sys.modules if m.startswith("jupyter_gpu_meter.service"))
        assert not found, found
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the ledger, read from the hub process -----------------------------------------


def test_one_ledger_per_url_schema_checked_once(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    assert shared_ledger(url) is None  # no meter has made it yet: nothing is created
    assert not (tmp_path / "ledger.sqlite").exists()
    sqlite3.connect(tmp_path / "ledger.sqlite").close()  # a file without the ledger's tables
    with pytest.raises(LedgerSchemaError):
        shared_ledger(url)
    set_money_budget(url, "ada", "15")
    first = shared_ledger(url)
    assert shared_ledger(url) is first
    assert read_budget_status(url, "ada", [], NOW).remaining == 15
    assert read_budget_status(url, "bob", [], NOW) is None


def test_a_locked_ledger_holds_up_no_docker_call(tmp_path):
    """The budget read waits for the lock on the spawner's own executor; DockerSpawner's
    executor (every user's Docker calls) stays free."""
    from jupyter_gpu_meter import GPUDockerSpawner

    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    with Ledger(url) as ledger:
        ledger.upgrade()
    # as a migration would: a lock that keeps readers out (WAL lets readers past a writer)
    locker = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("DELETE FROM budgets")
    spawner = GPUDockerSpawner()
    try:
        reading = spawner.meter_executor.submit(read_budget_status, url, "ada", [], NOW)
        time.sleep(0.2)  # the read is waiting for the lock now (or will be)
        started = time.monotonic()
        assert spawner.executor.submit(lambda: "docker").result(timeout=5) == "docker"
        assert time.monotonic() - started < 1
        assert not reading.done()
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert reading.result(timeout=15) is None
