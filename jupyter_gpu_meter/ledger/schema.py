"""Schema versions: alembic, run programmatically (no alembic.ini), and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).parent / "migrations"

#: the tables of the current schema, apart from alembic's own
TABLES = (
    "sessions",
    "rollups",
    "meter_state",
    "decisions",
    "budgets",
    "budget_changes",
    "storage_periods",
    "process_usage",
    "ssh_keys",
    "nodes",
)


class LedgerSchemaError(RuntimeError):
    """The database's schema is not the one this code needs; the message says what to run."""


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An alembic Config for the in-package migrations.

    With `connection`, migrations run on it (inside its transaction); with
    `url` (and no connection), env.py opens its own, e.g. for
    ``alembic.command.revision(alembic_config(url=...), autogenerate=True)``.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(connection), revision)


def is_empty(connection: Connection) -> bool:
    """True when the database (the current schema) has none of the ledger's tables."""
    names = set(inspect(connection).get_table_names())
    return not names & {*TABLES, "alembic_version"}


def check(connection: Connection, shown_url: str) -> None:
    """Raise LedgerSchemaError unless the database is at this code's head revision."""
    upgrade_cmd = f"jupyter-gpu-meter upgrade-db --db-url '{shown_url}'"
    if ":***@" in shown_url:
        upgrade_cmd += "  # with the password in place of ***"
    if is_empty(connection):
        raise LedgerSchemaError(
            f"The ledger database {shown_url} has no tables yet. Create them with:\n"
            f"    {upgrade_cmd}"
        )
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    current = current_revision(connection)
    if current == head:
        return
    if current is None:
        raise LedgerSchemaError(
            f"The ledger database {shown_url} has tables but no alembic revision: it was not "
            "created by jupyter-gpu-meter, or its alembic_version table was lost. Point "
            "--db-url at another database, or, if you know its revision, stamp it with "
            "alembic and then run:\n"
            f"    {upgrade_cmd}"
        )
    known = {rev.revision for rev in script.walk_revisions()}
    if current in known:
        raise LedgerSchemaError(
            f"The ledger database {shown_url} is at schema revision {current}; this version of "
            f"jupyter-gpu-meter needs {head}. Back up the database, then upgrade it with:\n"
            f"    {upgrade_cmd}"
        )
    raise LedgerSchemaError(
        f"The ledger database {shown_url} is at schema revision {current}, which this version "
        f"of jupyter-gpu-meter (newest revision {head}) does not know: it was upgraded by a "
        "newer jupyter-gpu-meter. Upgrade this installation to match:\n"
        "    pip install --upgrade jupyter-gpu-meter"
    )
