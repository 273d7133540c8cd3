"""Policy decisions and budgets in the ledger, on SQLite and PostgreSQL (see test_ledger.py)."""

import threading
from datetime import timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from jupyter_gpu_meter.ledger import BudgetChange, BudgetRecord, DecisionRecord
from jupyter_gpu_meter.ledger import schema as ledger_schema
from tests import test_ledger
from tests.test_ledger import T0, at, insert_old_session, open_session

# the same databases as test_ledger.py: a SQLite file and PostgreSQL
db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger


def decide(ledger, when=T0, **kwargs):
    values = dict(
        at=when,
        user="alice",
        server="",
        container_id="c1",
        policy="gpu-idle",
        action="stop",
        reason="GPUs idle for 30 min",
        dry_run=False,
        outcome="stopped",
    )
    return ledger.record_decision(**{**values, **kwargs})


def set_budget(ledger, name="alice", amount="50", **kwargs):
    values = dict(scope="user", unit="money", period="month", currency="USD", by="admin", at=T0)
    return ledger.set_budget(name=name, amount=amount, **{**values, **kwargs})


# --- schema -------------------------------------------------------------------------


def test_upgrading_from_0002_keeps_the_sessions_and_adds_the_tables(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0002")
        insert_old_session(connection)
    ledger.upgrade()
    ledger.check_revision()
    assert ledger.get_session("c1").user == "alice"
    assert decide(ledger) == 1
    assert set_budget(ledger) is True
    tables = set(sa.inspect(ledger.engine).get_table_names())
    assert {"decisions", "budgets", "budget_changes"} <= tables


def test_downgrading_to_0002_drops_only_the_new_tables(ledger):
    open_session(ledger)
    with ledger.engine.begin() as connection:
        from alembic import command

        command.downgrade(ledger_schema.alembic_config(connection), "0002")
    tables = set(sa.inspect(ledger.engine).get_table_names())
    assert not {"decisions", "budgets", "budget_changes"} & tables
    columns = {column["name"] for column in sa.inspect(ledger.engine).get_columns("sessions")}
    assert not {"gpu_microseconds", "charge_units"} & columns  # 0004's
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT username FROM sessions")).all() == [("alice",)]


# --- decisions ----------------------------------------------------------------------


def test_a_decision_round_trips(ledger):
    tokyo = timezone(timedelta(hours=9))
    when = T0.astimezone(tokyo)
    decision_id = decide(ledger, when, dry_run=True, outcome="would stop (dry run)")
    (record,) = ledger.decisions()
    assert record == DecisionRecord(
        id=decision_id,
        at=T0,
        user="alice",
        server="",
        container_id="c1",
        policy="gpu-idle",
        action="stop",
        reason="GPUs idle for 30 min",
        dry_run=True,
        outcome="would stop (dry run)",
    )
    assert record.at.tzinfo == timezone.utc


def test_a_retried_decision_is_recorded_once(ledger):
    first = decide(ledger)
    assert decide(ledger, outcome="stopped again") == first
    assert [d.outcome for d in ledger.decisions()] == ["stopped"]
    # the same policy at another time, or another policy at the same time, is another decision
    assert decide(ledger, at(60)) != first
    assert decide(ledger, policy="max-age") != first
    assert len(ledger.decisions()) == 3


def test_decisions_newest_first_by_user_since_and_limit(ledger):
    decide(ledger, at(0), user="alice", container_id="a1")
    decide(ledger, at(10), user="bob", container_id="b1", policy="budget", action="warn")
    decide(ledger, at(20), user="alice", container_id="a1", policy="max-age")
    decide(
        ledger,
        at(30),
        user="alice",
        container_id="a2",
        policy="keep-alive",
        action="keep-alive",
        outcome="reported activity",
    )

    def keys(**query):
        return [(d.user, d.policy) for d in ledger.decisions(**query)]

    assert keys() == [
        ("alice", "keep-alive"),
        ("alice", "max-age"),
        ("bob", "budget"),
        ("alice", "gpu-idle"),
    ]
    assert keys(user="alice") == [
        ("alice", "keep-alive"),
        ("alice", "max-age"),
        ("alice", "gpu-idle"),
    ]
    assert keys(user="bob") == [("bob", "budget")]
    assert keys(since=at(10)) == [("alice", "keep-alive"), ("alice", "max-age"), ("bob", "budget")]
    assert keys(user="alice", since=at(21)) == [("alice", "keep-alive")]
    assert keys(limit=2) == [("alice", "keep-alive"), ("alice", "max-age")]
    assert keys(user="nobody") == []


def test_decision_values_are_checked(ledger):
    with pytest.raises(ValueError, match="refused: the ledger takes timezone-aware UTC"):
        decide(ledger, T0.replace(tzinfo=None))
    with pytest.raises(TypeError, match="dry_run must be True or False, got 'no'"):
        decide(ledger, dry_run="no")
    with pytest.raises(ValueError, match="policy '' is not allowed: give a non-empty string"):
        decide(ledger, policy="")
    with pytest.raises(ValueError, match="limit 0 is not allowed: give a whole number >= 1"):
        ledger.decisions(limit=0)
    with pytest.raises(ValueError, match="since .* refused"):
        ledger.decisions(since=T0.replace(tzinfo=None))
    assert ledger.decisions() == []


# --- budgets ------------------------------------------------------------------------


def test_set_get_and_list_budgets(ledger):
    assert ledger.get_budget("user", "alice") is None
    assert set_budget(ledger, amount="50.5") is True
    set_budget(ledger, "students", "20", scope="group", unit="gpu-hours", currency=None)
    set_budget(ledger, "bob", 0, period="rolling:7", currency="eur", at=at(5), by="root")
    set_budget(ledger, "alice", "99", scope="group")  # a group may share a user's name
    alice = ledger.get_budget("user", "alice")
    assert alice == BudgetRecord(
        scope="user",
        name="alice",
        amount=Decimal("50.5"),
        unit="money",
        currency="USD",
        period="month",
        updated_at=T0,
        updated_by="admin",
    )
    assert str(alice.amount) == "50.500000"
    assert ledger.get_budget("group", "students").currency is None
    assert ledger.get_budget("user", "bob").currency == "EUR"
    assert ledger.get_budget("group", "alice").amount == 99
    assert [(b.scope, b.name) for b in ledger.budgets()] == [
        ("user", "alice"),
        ("user", "bob"),
        ("group", "alice"),
        ("group", "students"),
    ]


def test_setting_records_every_change_and_nothing_for_no_change(ledger):
    set_budget(ledger, amount="50")
    assert set_budget(ledger, amount="50.000", at=at(10), by="other") is False
    assert set_budget(ledger, amount="60", at=at(20), by="carol") is True
    assert set_budget(ledger, amount="60", period="rolling:30", at=at(30)) is True
    budget = ledger.get_budget("user", "alice")
    assert (budget.amount, budget.period, budget.updated_at, budget.updated_by) == (
        Decimal(60),
        "rolling:30",
        at(30),
        "admin",
    )
    changes = ledger.budget_changes()
    assert [(c.at, c.by, c.change, c.amount, c.period) for c in changes] == [
        (T0, "admin", "set", Decimal(50), "month"),
        (at(20), "carol", "set", Decimal(60), "month"),
        (at(30), "admin", "set", Decimal(60), "rolling:30"),
    ]
    assert changes[0] == BudgetChange(
        id=changes[0].id,
        at=T0,
        by="admin",
        scope="user",
        name="alice",
        change="set",
        amount=Decimal(50),
        unit="money",
        currency="USD",
        period="month",
        note="",
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"amount": "-5"}, r"amount '-5' is not allowed: use a non-negative number"),
        ({"amount": "fifty"}, r"amount 'fifty' is not a number"),
        ({"amount": "NaN"}, r"amount 'NaN' is not a number"),
        ({"amount": "1.0000001"}, r"has more than 6 decimal places"),
        ({"amount": "1e15"}, r"is too large"),
        ({"unit": "hours"}, r"unit 'hours' is not allowed: use 'money' .* or 'gpu-hours'"),
        ({"scope": "team"}, r"scope 'team' is not allowed: use 'user' or 'group'"),
        ({"period": "weekly"}, r"period 'weekly' is not allowed: use 'month' .* 'rolling:30'"),
        ({"period": "rolling:0"}, r"period 'rolling:0' is not allowed"),
        ({"period": "rolling:-3"}, r"period 'rolling:-3' is not allowed"),
        ({"period": "rolling:9999"}, r"the last 1 to 3660 days"),
        ({"currency": None}, r"a money budget needs a currency: .* e.g. 'USD'"),
        ({"currency": "dollars"}, r"currency 'dollars' is not an ISO 4217 code"),
        ({"unit": "gpu-hours"}, r"a gpu-hours budget has no currency \(got 'USD'\)"),
        ({"name": ""}, r"user name '' is not allowed"),
        ({"by": ""}, r"by '' is not allowed"),
        ({"at": T0.replace(tzinfo=None)}, r"at .* refused"),
    ],
)
def test_bad_budgets_are_refused_saying_what_is_allowed(ledger, kwargs, message):
    with pytest.raises(ValueError, match=message):
        set_budget(ledger, **kwargs)
    assert ledger.budgets() == [] and ledger.budget_changes() == []


def test_periods_and_units_are_normalised(ledger):
    set_budget(ledger, unit=" Money ", period="Rolling: 030", currency="usd")
    budget = ledger.get_budget("user", "alice")
    assert (budget.unit, budget.period, budget.currency) == ("money", "rolling:30", "USD")


def test_grants_take_the_budgets_unit_and_are_recorded(ledger):
    set_budget(ledger, amount="50")
    first = ledger.grant_budget(
        scope="user", name="alice", amount="10", by="carol", at=at(5), note="deadline"
    )
    assert first == BudgetChange(
        id=first.id,
        at=at(5),
        by="carol",
        scope="user",
        name="alice",
        change="grant",
        amount=Decimal(10),
        unit="money",
        currency="USD",
        period="month",
        note="deadline",
    )
    second = ledger.grant_budget(scope="user", name="alice", amount="2.5", by="carol", at=at(6))
    assert second.id != first.id  # grants add up
    assert ledger.get_budget("user", "alice").amount == 50  # the budget itself is unchanged
    assert [c.change for c in ledger.budget_changes(scope="user", name="alice")] == [
        "set",
        "grant",
        "grant",
    ]


def test_a_user_without_an_own_budget_gets_a_grant_in_a_given_unit(ledger):
    set_budget(ledger, "students", scope="group", unit="gpu-hours", currency=None)
    with pytest.raises(ValueError, match="user 'bob' has no budget of their own: .* unit="):
        ledger.grant_budget(scope="user", name="bob", amount="1", by="carol", at=T0)
    change = ledger.grant_budget(
        scope="user", name="bob", amount="1", unit="gpu-hours", by="carol", at=T0
    )
    assert (change.unit, change.currency, change.period) == ("gpu-hours", None, None)
    money = ledger.grant_budget(
        scope="user", name="bob", amount="1", unit="money", currency="eur", by="carol", at=T0
    )
    assert money.currency == "EUR"


def test_bad_grants_are_refused(ledger):
    set_budget(ledger, amount="50")
    grant = dict(scope="user", name="alice", by="carol", at=T0)
    with pytest.raises(ValueError, match="grant amount '0' is not allowed: use a positive number"):
        ledger.grant_budget(amount="0", **grant)
    with pytest.raises(ValueError, match="grant amount '-1' is not allowed"):
        ledger.grant_budget(amount="-1", **grant)
    with pytest.raises(ValueError, match="has a budget in USD: a grant is in the same unit"):
        ledger.grant_budget(amount="1", unit="gpu-hours", **grant)
    with pytest.raises(ValueError, match="has a budget in USD: a grant is in the same unit"):
        ledger.grant_budget(amount="1", currency="EUR", **grant)
    with pytest.raises(ValueError, match="group 'students' has no budget to add to: set one"):
        ledger.grant_budget(scope="group", name="students", amount="1", by="carol", at=T0)
    assert [c.change for c in ledger.budget_changes()] == ["set"]
    ledger.grant_budget(amount="1", unit="money", currency="usd", **grant)  # the same unit: fine


def test_remove_records_what_was_removed(ledger):
    set_budget(ledger, amount="50")
    assert ledger.remove_budget(scope="user", name="alice", by="carol", at=at(9)) is True
    assert ledger.remove_budget(scope="user", name="alice", by="carol", at=at(10)) is False
    assert ledger.get_budget("user", "alice") is None and ledger.budgets() == []
    *_, removal = ledger.budget_changes()
    assert (removal.change, removal.at, removal.by, removal.amount, removal.unit) == (
        "remove",
        at(9),
        "carol",
        Decimal(50),
        "money",
    )
    assert len(ledger.budget_changes()) == 2
    assert set_budget(ledger, amount="50", at=at(11)) is True  # set again: a change


def test_budget_changes_by_scope_and_name_oldest_first(ledger):
    set_budget(ledger, "alice", at=at(2))
    set_budget(ledger, "students", scope="group", at=at(1))
    set_budget(ledger, "bob", at=at(3))
    assert [c.name for c in ledger.budget_changes()] == ["students", "alice", "bob"]
    assert [c.name for c in ledger.budget_changes(scope="user")] == ["alice", "bob"]
    assert [c.name for c in ledger.budget_changes(scope="group", name="students")] == ["students"]
    assert ledger.budget_changes(scope="group", name="alice") == []
    with pytest.raises(ValueError, match="scope 'users' is not allowed"):
        ledger.budget_changes(scope="users")


def test_concurrent_first_sets_of_one_budget_all_succeed(ledger, make_ledger):
    errors = []

    def write(amount):
        other = make_ledger()
        try:
            set_budget(other, amount=amount, at=at(amount))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(amount,)) for amount in (10, 20, 30, 40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    changes = ledger.budget_changes()
    assert sorted(c.amount for c in changes) == [10, 20, 30, 40]
    # the budget is the last change written
    last = max(changes, key=lambda change: change.id)
    assert ledger.get_budget("user", "alice").amount == last.amount
