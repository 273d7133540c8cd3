"""Per-minute GPU utilization rollups, one row per writer (meter process)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("gpu_uuid", sa.String(length=128), nullable=False),
        sa.Column("minute", UTCDateTime(), nullable=False),
        sa.Column("writer", sa.String(length=128), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("util_mean", sa.Float(), nullable=False),
        sa.Column("util_max", sa.Integer(), nullable=False),
        sa.Column("memory_max_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_rollups_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "gpu_uuid", "minute", "writer", name="pk_rollups"),
    )


def downgrade() -> None:
    op.drop_table("rollups")
