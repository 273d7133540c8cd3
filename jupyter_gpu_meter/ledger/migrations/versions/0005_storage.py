"""Storage periods: each home's and snapshot's measured size over time, and its price

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import Money, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_periods",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("volume", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("price_per_gb_month", Money(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("byte_hours", sa.BigInteger(), nullable=True),
        sa.Column("charge_units", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_storage_periods"),
        sa.UniqueConstraint("volume", "started_at", name="uq_storage_periods_volume_started_at"),
    )
    op.create_index("ix_storage_periods_volume_ended_at", "storage_periods", ["volume", "ended_at"])
    op.create_index(
        "ix_storage_periods_username_ended_at", "storage_periods", ["username", "ended_at"]
    )
    op.create_index("ix_storage_periods_ended_at", "storage_periods", ["ended_at"])


def downgrade() -> None:
    op.drop_index("ix_storage_periods_ended_at", table_name="storage_periods")
    op.drop_index("ix_storage_periods_username_ended_at", table_name="storage_periods")
    op.drop_index("ix_storage_periods_volume_ended_at", table_name="storage_periods")
    op.drop_table("storage_periods")
