"""jupyter-gpu-meter budget ..., run as an admin runs it."""

import getpass
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from jupyter_gpu_meter.ledger import Ledger, StoragePeriod
from tests import test_ledger
from tests.test_cli import add, cli

# the happy path runs on a SQLite file and on PostgreSQL, like the ledger's tests
db_url = test_ledger.db_url


@pytest.fixture
def now():
    """Now, as each test starts: the CLI prices running sessions up to its own now."""
    return datetime.now(timezone.utc)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite"
    with Ledger(url) as ledger:
        ledger.upgrade()  # in this process: quicker than `upgrade-db`, which tests run elsewhere
    return url


def budget(url, *args, check=True):
    return cli("budget", *args, "--db-url", url, check=check)


def show(url, *args):
    return json.loads(budget(url, "show", "--format", "json", *args).stdout)


def history(url, *args):
    return json.loads(budget(url, "history", "--format", "json", *args).stdout)


def test_set_show_grant_history_and_remove(db_url, now):
    cli("upgrade-db", "--db-url", db_url)
    with Ledger(db_url) as ledger:
        add(ledger, "a1", "ada", 1, now - timedelta(hours=3), 60)  # 1 GPU-hour at 2.49
        add(ledger, "a2", "ada", 2, now - timedelta(minutes=30), None)  # running: 2 x 30 min so far
        add(ledger, "b1", "bob", 1, now - timedelta(hours=2), 60)  # someone else's
    out = budget(
        db_url, "set", "--user", "ada", "--amount", "50", "--period", "rolling:30", "--by", "root"
    ).stdout
    assert out == "user ada: budget set to 50.00 USD per 30 days (rolling)\n"
    (row,) = show(db_url, "--user", "ada")
    assert (row["user"], row["scope"], row["name"]) == ("ada", "user", "ada")
    assert (row["limit"], row["granted"], row["unit"], row["currency"]) == (
        "50.00",
        "0.00",
        "USD",
        "USD",
    )
    spent = Decimal(row["spent"])
    assert Decimal("4.98") <= spent <= Decimal("5.10")  # 2.49 + 2 x 2.49 x (30 min and counting)
    assert Decimal(row["remaining"]) == 50 - spent
    assert abs(Decimal(row["fraction"]) - spent / 50) <= Decimal("0.0002")  # spent is rounded
    start = datetime.fromisoformat(row["period_start"])
    assert timedelta(days=30) <= now + timedelta(minutes=5) - start <= timedelta(days=30, minutes=5)

    out = budget(db_url, "grant", "--user", "ada", "--amount", "10", "--note", "deadline").stdout
    assert out == "user ada: granted 10.00 USD for the current period\n"
    (row,) = show(db_url, "--user", "ada")
    assert (row["amount"], row["granted"], row["limit"]) == ("50.00", "10.00", "60.00")

    assert budget(db_url, "remove", "--user", "ada", "--by", "carol").stdout == (
        "user ada: budget removed\n"
    )
    assert budget(db_url, "remove", "--user", "ada").stdout == (
        "user ada has no budget of its own: nothing removed\n"
    )
    assert show(db_url, "--user", "ada") == []
    assert budget(db_url, "show", "--user", "ada").stdout == (
        "user ada: no budget applies (no limit)\n"
    )

    changes = history(db_url, "--user", "ada")
    assert [(c["change"], c["by"], c["amount"], c["note"]) for c in changes] == [
        ("set", "root", "50.00", ""),
        ("grant", getpass.getuser(), "10.00", "deadline"),  # --by defaults to the OS user
        ("remove", "carol", "50.00", ""),
    ]
    assert changes[0]["period"] == "rolling:30" and changes[0]["unit"] == "USD"
    assert datetime.fromisoformat(changes[0]["at"]) - now < timedelta(minutes=5)
    assert history(db_url, "--user", "bob") == []


def test_a_group_budget_applies_to_each_member_and_the_own_one_wins(url, now):
    with Ledger(url) as ledger:
        add(ledger, "b1", "bob", 1, now - timedelta(hours=2), 60)
    budget(url, "set", "--group", "students", "--amount", "50", "--period", "rolling:30")
    budget(url, "set", "--group", "staff", "--amount", "500", "--period", "rolling:30")
    (row,) = show(url, "--user", "bob", "--groups", "students, staff")
    assert (row["user"], row["scope"], row["name"], row["limit"]) == (
        "bob",
        "group",
        "staff",
        "500.00",
    )
    assert row["spent"] == "2.49"
    (row,) = show(url, "--user", "bob", "--groups", "students")
    assert (row["name"], row["remaining"]) == ("students", "47.51")
    assert show(url, "--user", "bob") == []  # no groups given, no own budget

    # a grant on top of the group's budget, for bob only
    out = budget(url, "grant", "--user", "bob", "--amount", "5", "--groups", "students").stdout
    assert out == "user bob: granted 5.00 USD for the current period\n"
    (row,) = show(url, "--user", "bob", "--groups", "students")
    assert (row["name"], row["granted"], row["limit"]) == ("students", "5.00", "55.00")

    budget(url, "set", "--user", "bob", "--amount", "5", "--unit", "gpu-hours", "--period", "month")
    (row,) = show(url, "--user", "bob", "--groups", "staff")
    assert (row["scope"], row["unit"], row["currency"], row["limit"]) == (
        "user",
        "GPU-hours",
        None,
        "5.0000",
    )


def test_show_everything_as_a_table(url, now):
    with Ledger(url) as ledger:
        add(ledger, "a1", "ada", 2, now - timedelta(hours=2), 30)  # 1 GPU-hour
    budget(url, "set", "--group", "students", "--amount", "50")
    budget(
        url, "set", "--user", "ada", "--amount", "4", "--unit", "gpu-hours", "--period", "rolling:7"
    )
    lines = budget(url, "show").stdout.splitlines()
    assert lines[0].split() == [
        "user",
        "budget",
        "period",
        "since",
        "limit",
        "spent",
        "remaining",
        "used",
        "unit",
    ]
    ada = lines[1].split()
    assert ada[:3] == ["ada", "user", "ada"]
    assert ada[-6:] == ["4.0000", "1.0000", "3.0000", "25.0", "%", "GPU-hours"]
    assert lines[2].startswith("(each member)  group students  month")
    assert lines[2].split()[-5:] == ["50.00", "-", "-", "-", "USD"]
    (group,) = show(url, "--group", "students")
    assert (group["user"], group["spent"], group["limit"]) == (None, None, "50.00")
    assert budget(url, "show", "--group", "nobody").stdout == "group nobody has no budget\n"


def test_set_keeps_what_is_left_out_and_says_what_changed(url):
    budget(
        url, "set", "--user", "ada", "--amount", "50", "--currency", "EUR", "--period", "rolling:14"
    )
    out = budget(url, "set", "--user", "ada", "--amount", "60").stdout
    assert out == (
        "user ada: budget set to 60.00 EUR per 14 days (rolling) "
        "(was 50.00 EUR per 14 days (rolling))\n"
    )
    out = budget(url, "set", "--user", "ada", "--amount", "60.0").stdout
    assert out == "user ada: budget unchanged, 60.00 EUR per 14 days (rolling)\n"
    assert len(history(url)) == 2


def test_a_new_budget_is_in_the_hubs_currency(url, tmp_path, now):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        f"c = get_config()\nc.MeterService.db_url = {url!r}\nc.Pricing.currency = 'JPY'\n"
    )
    out = cli("budget", "set", "--config", str(config), "--group", "a", "--amount", "5000").stdout
    assert out == "group a: budget set to 5000 JPY per calendar month\n"
    # the hub's setting alone decides: not the currency of sessions in the ledger
    with Ledger(url) as ledger:
        add(ledger, "e1", "ada", 1, now - timedelta(hours=1), 10, currency="EUR")
    out = budget(url, "set", "--group", "b", "--amount", "1").stdout
    assert out == "group b: budget set to 1.00 USD per calendar month\n"
    gpu_hours = cli(
        "budget",
        "set",
        "--config",
        str(config),
        "--group",
        "c",
        "--amount",
        "3",
        "--unit",
        "gpu-hours",
    ).stdout
    assert gpu_hours == "group c: budget set to 3.0000 GPU-hours per calendar month\n"


def test_show_counts_storage_as_the_meter_does(url, now):
    with Ledger(url) as ledger:
        add(ledger, "a1", "ada", 1, now - timedelta(hours=3), 60)  # 2.49
        # 100 GB for an hour at 7.30 per GB-month: 1.00
        ledger.add_storage_periods(
            [
                StoragePeriod(
                    "ada",
                    "jgm-home-ada",
                    "home",
                    now - timedelta(hours=2),
                    now - timedelta(hours=1),
                    100 * 10**9,
                    Decimal("7.30"),
                    "USD",
                )
            ],
            now - timedelta(hours=1),
        )
    budget(url, "set", "--user", "ada", "--amount", "50", "--period", "rolling:30")
    (row,) = show(url, "--user", "ada")
    assert (row["spent"], row["remaining"]) == ("3.49", "46.51")
    (row,) = show(url)
    assert (row["user"], row["spent"]) == ("ada", "3.49")
    with Ledger(url) as ledger:
        assert ledger.user_budget_status("ada", [], datetime.now(timezone.utc)).spent == Decimal(
            "3.49"
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["set", "--user", "a", "--group", "g", "--amount", "1"],
            "give --user or --group, not both",
        ),
        (["set", "--amount", "1"], "give whose budget it is: --user NAME or --group NAME"),
        (["set", "--user", "a"], "give the budget's amount per period: --amount, e.g. --amount 50"),
        (["set", "--user", "a", "--amount", "ten"], "amount 'ten' is not a number: use a non-neg"),
        (
            ["set", "--user", "a", "--amount", "-5"],
            "amount '-5' is not allowed: use a non-negative",
        ),
        (
            ["set", "--user", "a", "--amount", "1", "--period", "weekly"],
            "use 'month' (the calendar",
        ),
        (["set", "--user", "a", "--amount", "1", "--period", "rolling:0"], "'rolling:30'"),
        (["set", "--user", "a", "--amount", "1", "--unit", "hours"], "use 'money' (an amount in a"),
        (
            ["set", "--user", "a", "--amount", "1", "--unit", "gpu-hours", "--currency", "USD"],
            "a gpu-hours budget has no currency (got 'USD'): leave the currency out",
        ),
        (["set", "--user", "a", "--amount", "1", "--currency", "$"], "is not an ISO 4217 code"),
        (["set", "--user", "a", "--amount", "1", "--by", ""], "say who makes the change: --by"),
        (["grant", "--user", "a", "--amount", "0"], "user a has no budget of their own"),
        (["grant", "--user", "a"], "give the extra amount: --amount, e.g. --amount 10"),
        (["grant", "--group", "g", "--amount", "5"], "group 'g' has no budget to add to: set one"),
        (["remove"], "give whose budget it is: --user NAME or --group NAME"),
        (["remove", "--user", "a", "--group", "g"], "give --user or --group, not both"),
        (["show", "--user", "a", "--group", "g"], "give --user or --group, not both"),
        (["history", "--user", "a", "--group", "g"], "give --user or --group, not both"),
    ],
)
def test_errors_exit_2_with_a_message_and_no_traceback(url, args, message):
    result = budget(url, *args, check=False)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_grant_of_nothing_is_refused(url):
    budget(url, "set", "--user", "a", "--amount", "5")
    result = budget(url, "grant", "--user", "a", "--amount", "0", check=False)
    assert result.returncode == 2
    assert "grant amount '0' is not allowed: use a positive number" in result.stderr
    assert len(history(url)) == 1


def test_a_database_without_the_schema_says_what_to_run(tmp_path):
    empty = f"sqlite:///{tmp_path}/empty.sqlite"
    for args in (["show"], ["set", "--user", "a", "--amount", "1"]):
        result = budget(empty, *args, check=False)
        assert result.returncode == 2
        assert "jupyter-gpu-meter upgrade-db" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_budget_command_must_be_named():
    result = cli("budget", "frobnicate", check=False)
    assert result.returncode == 2
    assert "'frobnicate' is not a budget command: use set, grant, remove, show, history" in (
        result.stderr
    )
    result = cli("budget", check=False)
    assert result.returncode == 2
    assert "give a budget command: set, grant, remove, show, history" in result.stderr
