"""Policies in cluster mode (issue 15): why the hub's meter stopped a session, and an
index for reading recent rollups

The hub's meter writes ``sessions.stop_reason`` before it asks the hub to stop a
server; the node's agent, which sees the container die, ends the session with it.
Rows written before this revision have none (NULL). The index on rollups
(session, minute) lets the hub read the last minutes of each running session
without walking all its rollups.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


# A plain ADD/DROP COLUMN, never a batch (copy) of `sessions`: see 0006.


def upgrade() -> None:
    op.add_column("sessions", sa.Column("stop_reason", sa.String(length=255), nullable=True))
    op.create_index("ix_rollups_session_id_minute", "rollups", ["session_id", "minute"])


def downgrade() -> None:
    op.drop_index("ix_rollups_session_id_minute", table_name="rollups")
    op.drop_column("sessions", "stop_reason")
