"""Each closed session's GPU time and charge as whole numbers, and indexes to add them up

Totals over many sessions (the admin page, /metrics, everyone's month) add
these up in SQL instead of reading every session. Closed sessions are filled
in from their price snapshots, 10,000 at a time.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from jupyter_gpu_meter.ledger.types import Money, UTCDateTime
from jupyter_gpu_meter.pricing import PriceSnapshot, session_sums

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 10_000


def upgrade() -> None:
    op.add_column("sessions", sa.Column("gpu_microseconds", sa.BigInteger(), nullable=True))
    op.add_column("sessions", sa.Column("charge_units", sa.BigInteger(), nullable=True))
    op.create_index("ix_sessions_username_ended_at", "sessions", ["username", "ended_at"])
    op.drop_index("ix_sessions_ended_at", table_name="sessions")
    op.create_index("ix_sessions_ended_at_started_at", "sessions", ["ended_at", "started_at"])
    _fill_in_closed_sessions(op.get_bind())
    # after the fill: by then it holds only the running sessions
    op.create_index(
        "ix_sessions_unsummed",
        "sessions",
        ["username"],
        sqlite_where=sa.text("charge_units IS NULL"),
        postgresql_where=sa.text("charge_units IS NULL"),
    )


def _fill_in_closed_sessions(connection) -> None:
    sessions = sa.table(
        "sessions",
        sa.column("id", sa.Integer()),
        sa.column("gpu_count", sa.Integer()),
        sa.column("gpu_model", sa.String()),
        sa.column("price_per_gpu_hour", Money()),
        sa.column("cpu_price_per_hour", Money()),
        sa.column("currency", sa.String()),
        sa.column("billing_increment_s", sa.Integer()),
        sa.column("minimum_charge", Money()),
        sa.column("started_at", UTCDateTime()),
        sa.column("ended_at", UTCDateTime()),
        sa.column("gpu_microseconds", sa.BigInteger()),
        sa.column("charge_units", sa.BigInteger()),
    )
    update = (
        sa.update(sessions)
        .where(sessions.c.id == sa.bindparam("row_id"))
        .values(
            gpu_microseconds=sa.bindparam("gpu_us"),
            charge_units=sa.bindparam("units"),
        )
    )
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(sessions)
            .where(sessions.c.ended_at.is_not(None), sessions.c.id > last_id)
            .order_by(sessions.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        values = []
        for row in rows:
            snapshot = PriceSnapshot(
                gpu_model=row.gpu_model,
                gpus=row.gpu_count,
                price_per_gpu_hour=row.price_per_gpu_hour,
                cpu_price_per_hour=row.cpu_price_per_hour,
                currency=row.currency,
                billing_increment_s=row.billing_increment_s,
                minimum_charge=row.minimum_charge,
            )
            gpu_us, units = session_sums(snapshot, row.started_at, row.ended_at)
            values.append({"row_id": row.id, "gpu_us": gpu_us, "units": units})
        connection.execute(update, values)
        last_id = rows[-1].id


def downgrade() -> None:
    op.drop_index("ix_sessions_unsummed", table_name="sessions")
    op.drop_index("ix_sessions_ended_at_started_at", table_name="sessions")
    op.create_index("ix_sessions_ended_at", "sessions", ["ended_at"])
    op.drop_index("ix_sessions_username_ended_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("charge_units")
        batch.drop_column("gpu_microseconds")
