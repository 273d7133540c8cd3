"""Busy GPU-time and energy per rollup, the energy price per session, process groups

Rows written before this revision read as busy time not measured (busy_source ""),
unknown energy (NULL), and an energy price of 0 (energy not charged).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import Money, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN, never a batch (copy) of a table: both databases add a column
# with a default without rewriting the rows (a big rollups table), and SQLite >= 3.35
# drops one in place, where copying `sessions` would cascade-delete every rollup.


def upgrade() -> None:
    op.add_column(
        "rollups", sa.Column("busy_ms", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column("rollups", sa.Column("energy_mj", sa.BigInteger(), nullable=True))
    op.add_column(
        "rollups",
        sa.Column(
            # "" = busy time not measured: the rows already there (written explicitly since)
            "busy_source",
            sa.String(length=16),
            nullable=False,
            server_default="",
        ),
    )
    # as Money writes it: SQLite keeps fixed-point text, equal only in the same form
    op.add_column(
        "sessions",
        sa.Column("energy_price_per_kwh", Money(), nullable=False, server_default="0.000000"),
    )
    for name in ("rollup_samples", "busy_ms", "energy_mj", "energy_units"):
        op.add_column("sessions", sa.Column(name, sa.BigInteger(), nullable=True))
    for name in ("rollups_from", "rollups_until"):
        op.add_column("sessions", sa.Column(name, UTCDateTime(), nullable=True))
    _fill_in_closed_sessions()
    op.create_index("ix_sessions_rollups_until", "sessions", ["rollups_until"])
    op.create_index("ix_sessions_username_rollups_until", "sessions", ["username", "rollups_until"])
    # after the fill: by then it holds only the running sessions
    op.create_index(
        "ix_sessions_unrolled",
        "sessions",
        ["username"],
        sqlite_where=sa.text("rollup_samples IS NULL"),
        postgresql_where=sa.text("rollup_samples IS NULL"),
    )
    op.create_table(
        "process_usage",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("process_group", sa.String(length=64), nullable=False),
        sa.Column("writer", sa.String(length=128), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("present_ms", sa.BigInteger(), nullable=False),
        sa.Column("busy_ms", sa.BigInteger(), nullable=False),
        sa.Column("memory_max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_process_usage_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "process_group", "writer", name="pk_process_usage"),
    )


def _fill_in_closed_sessions() -> None:
    """Each closed session's rollups added up, in two statements (UPDATE ... FROM a
    GROUP BY over the rollups' primary key; SQLite >= 3.33). Rollups written before
    this revision measured no busy time and no energy: no busy samples, energy NULL."""
    sessions = sa.table(
        "sessions",
        sa.column("id", sa.Integer()),
        sa.column("ended_at", UTCDateTime()),
        *(sa.column(name, sa.BigInteger()) for name in _SUMS),
        sa.column("rollups_from", UTCDateTime()),
        sa.column("rollups_until", UTCDateTime()),
    )
    rollups = sa.table(
        "rollups",
        sa.column("session_id", sa.Integer()),
        sa.column("minute", UTCDateTime()),
    )
    sums = (
        sa.select(
            rollups.c.session_id,
            sa.func.min(rollups.c.minute).label("first"),
            sa.func.max(rollups.c.minute).label("last"),
        )
        .group_by(rollups.c.session_id)
        .subquery()
    )
    op.execute(
        sa.update(sessions)
        .where(sessions.c.id == sums.c.session_id, sessions.c.ended_at.is_not(None))
        .values(
            rollup_samples=0,  # samples with busy time: none before this revision
            busy_ms=0,
            energy_units=0,
            rollups_from=sums.c.first,
            rollups_until=sums.c.last,
        )
    )
    op.execute(  # closed without rollups: CPU only, or never sampled
        sa.update(sessions)
        .where(sessions.c.ended_at.is_not(None), sessions.c.rollup_samples.is_(None))
        .values(rollup_samples=0, busy_ms=0, energy_units=0)
    )


_SUMS = ("rollup_samples", "busy_ms", "energy_mj", "energy_units")


def downgrade() -> None:
    op.drop_table("process_usage")
    op.drop_index("ix_sessions_unrolled", table_name="sessions")
    op.drop_index("ix_sessions_username_rollups_until", table_name="sessions")
    op.drop_index("ix_sessions_rollups_until", table_name="sessions")
    for name in ("rollups_until", "rollups_from", "energy_units", "energy_mj", "busy_ms"):
        op.drop_column("sessions", name)
    op.drop_column("sessions", "rollup_samples")
    op.drop_column("sessions", "energy_price_per_kwh")
    for column in ("busy_source", "energy_mj", "busy_ms"):
        op.drop_column("rollups", column)
