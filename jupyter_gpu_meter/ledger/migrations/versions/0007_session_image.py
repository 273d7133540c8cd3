"""The image each session ran (its display name, an ``allowed_images`` key)

Rows written before this revision read as "" (image unknown).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# A plain ADD/DROP COLUMN, never a batch (copy) of `sessions`: see 0006.


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("image", sa.String(length=255), nullable=False, server_default="")
    )


def downgrade() -> None:
    op.drop_column("sessions", "image")
