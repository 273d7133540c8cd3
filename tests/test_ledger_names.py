"""The rule for user and server names (ledger.models.name_problem) against both real databases.

The spawner refuses a name before a start when ``name_problem`` says the
ledger cannot store it. Here every name the rule accepts is written to a real
SQLite file and a real PostgreSQL schema (as a session, a decision and a
budget) and read back unchanged; every name it refuses fails to store there,
or the rule's reason names the database that would refuse it.
"""

import itertools
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.ledger.models import NAME_MAX_LENGTH, NAME_RULE, name_problem
from jupyter_gpu_meter.pricing import Pricing

T0 = datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc)
PRICE = Pricing(cpu_price="0.05").snapshot("", 0)
_ids = itertools.count()

STORABLE = [
    "ada",
    "",  # the default server's name
    "a" * NAME_MAX_LENGTH,
    "😀" * NAME_MAX_LENGTH,  # four UTF-8 bytes each: PostgreSQL counts characters
    "\U0010ffff" * NAME_MAX_LENGTH,
    "名前 with spaces",
    "tab\there\nnewline\r\x01\x1f\x7f",
    "Robert'); DROP TABLE sessions;--",
    "\u202eevil\ufeff",
    "%00%s{username}",
]
#: (name, words the reason must contain)
UNSTORABLE = [
    ("a" * (NAME_MAX_LENGTH + 1), f"at most {NAME_MAX_LENGTH}"),
    ("😀" * (NAME_MAX_LENGTH + 1), f"at most {NAME_MAX_LENGTH}"),
    ("a\x00b", "NUL"),
    ("\x00", "NUL"),
    ("\ud800", "lone surrogate"),
    ("ada\udfff", "lone surrogate"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    with Ledger(url) as ledger:
        ledger.ensure_schema()
        yield ledger


def store_and_read(ledger: Ledger, name: str) -> None:
    """Write `name` wherever the ledger keeps user and server names; check it reads back."""
    container_id = f"c{next(_ids)}"
    ledger.open_session(
        container_id=container_id,
        user=name,
        server=name,
        gpu_uuids=[],
        gpu_model="",
        profile="",
        price=PRICE,
        started_at=T0,
    )
    session = ledger.get_session(container_id)
    assert (session.user, session.server) == (name, name)
    ledger.record_decision(
        at=T0,
        user=name or "ada",
        server=name,
        container_id=container_id,
        policy="gpu-idle",
        action="stop",
        reason="test",
        dry_run=True,
        outcome="would stop (dry run)",
    )
    (decision,) = [d for d in ledger.decisions(limit=1000) if d.container_id == container_id]
    assert (decision.user, decision.server) == (name or "ada", name)
    if name.strip():  # budgets are for named users and groups only (budgets.parse_name)
        ledger.set_budget(
            scope="user", name=name, amount="5", unit="gpu-hours", period="month", by=name, at=T0
        )
        assert ledger.get_budget("user", name).name == name


@pytest.mark.parametrize("name", STORABLE, ids=lambda name: repr(name)[:30])
def test_every_name_the_rule_accepts_is_stored_unchanged(ledger, name):
    assert name_problem(name) is None
    store_and_read(ledger, name)


@pytest.mark.parametrize("name, reason", UNSTORABLE, ids=lambda value: repr(value)[:30])
def test_every_name_the_rule_refuses_fails_to_store_or_has_a_stated_reason(ledger, name, reason):
    problem = name_problem(name)
    assert problem is not None and reason in problem
    try:
        store_and_read(ledger, name)
    except Exception:
        return  # the database refused it, as the rule said
    # stored anyway: only SQLite is that lenient, and the reason names the database that is not
    assert ledger.url.startswith("sqlite")
    assert "PostgreSQL" in problem


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a suite that is green every time
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.text(st.characters(exclude_categories=()), max_size=NAME_MAX_LENGTH + 5))
@example(name="x" * NAME_MAX_LENGTH + "\x00")
@example(name=" ")
def test_any_text_is_stored_exactly_when_the_rule_accepts_it(ledger, name):
    problem = name_problem(name)
    if problem is None:
        store_and_read(ledger, name)
    elif not ledger.url.startswith("sqlite"):
        with pytest.raises(Exception):  # noqa: B017, PT011 -- any refusal by the database
            store_and_read(ledger, name)


def test_the_rule_in_words():
    assert NAME_RULE == "at most 255 characters of valid Unicode, without NUL characters"
    assert name_problem(b"ada") == "it is a bytes, not text"
