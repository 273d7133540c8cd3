"""Policy decisions, budgets and the record of every budget change

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import Money, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("server", sa.String(length=255), nullable=False),
        sa.Column("container_id", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.UniqueConstraint(
            "container_id", "policy", "at", name="uq_decisions_container_id_policy_at"
        ),
    )
    op.create_index("ix_decisions_username_at", "decisions", ["username", "at"])
    op.create_index("ix_decisions_at", "decisions", ["at"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
        sa.UniqueConstraint("scope", "name", name="uq_budgets_scope_name"),
    )
    op.create_table(
        "budget_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("amount", Money(), nullable=True),
        sa.Column("unit", sa.String(length=16), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("period", sa.String(length=32), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_changes"),
    )
    op.create_index("ix_budget_changes_scope_name_at", "budget_changes", ["scope", "name", "at"])


def downgrade() -> None:
    op.drop_index("ix_budget_changes_scope_name_at", table_name="budget_changes")
    op.drop_table("budget_changes")
    op.drop_table("budgets")
    op.drop_index("ix_decisions_at", table_name="decisions")
    op.drop_index("ix_decisions_username_at", table_name="decisions")
    op.drop_table("decisions")
