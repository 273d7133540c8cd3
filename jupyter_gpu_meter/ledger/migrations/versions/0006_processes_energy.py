"""Busy GPU-time and energy per rollup, the energy price per session, process groups

Rows written before this revision read as 0 ms busy, unknown energy (NULL),
busy from utilization, and an energy price of 0 (energy not charged).

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


def upgrade() -> None:
    with op.batch_alter_table("rollups") as batch:
        batch.add_column(sa.Column("busy_ms", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("energy_mj", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column(
                "busy_source", sa.String(length=16), nullable=False, server_default="utilization"
            )
        )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("energy_price_per_kwh", Money(), nullable=False, server_default="0")
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


def downgrade() -> None:
    op.drop_table("process_usage")
    op.drop_column("sessions", "energy_price_per_kwh")
    for column in ("busy_source", "energy_mj", "busy_ms"):
        op.drop_column("rollups", column)
