"""Several GPU servers (issue 15): each session's node, and the nodes' heartbeats

Rows written before this revision read as node "" (one host).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# A plain ADD/DROP COLUMN, never a batch (copy) of `sessions`: see 0006.


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("node", sa.String(length=255), nullable=False, server_default="")
    )
    op.create_index("ix_sessions_node_ended_at", "sessions", ["node", "ended_at"])
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("gpus", sa.Text(), nullable=False),
        sa.Column("agent_version", sa.String(length=64), nullable=False),
        sa.Column("agent_started_at", UTCDateTime(), nullable=False),
        sa.Column("last_heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_interval_s", sa.Float(), nullable=False),
        sa.Column("lost_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )


def downgrade() -> None:
    op.drop_table("nodes")
    op.drop_index("ix_sessions_node_ended_at", table_name="sessions")
    op.drop_column("sessions", "node")
