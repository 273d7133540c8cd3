"""The image each session ran, in the ledger, on SQLite and PostgreSQL (see test_ledger.py):
migration 0007, the column's write and read, and where it shows (API JSON, CSV)."""

from decimal import Decimal

import sqlalchemy as sa
from alembic import command

from jupyter_gpu_meter import usage
from jupyter_gpu_meter.ledger import schema as ledger_schema
from jupyter_gpu_meter.pricing import Pricing
from tests import test_ledger
from tests.test_ledger import H100, T0, at, insert_old_session

db_url = test_ledger.db_url
clock = test_ledger.clock
make_ledger = test_ledger.make_ledger
ledger = test_ledger.ledger

TORCH = "PyTorch 2.9 / CUDA 12.8"


def start(ledger, container_id="c1", image=TORCH):
    assert ledger.open_session(
        container_id=container_id,
        user="alice",
        server="",
        gpu_uuids=("GPU-a",),
        gpu_model=H100,
        profile="gpu-1",
        price=Pricing(prices={H100: "2.49"}).snapshot(H100, 1),
        started_at=T0,
        image=image,
    )
    return ledger.get_session(container_id)


def test_upgrading_from_0006_reads_old_sessions_as_image_unknown(make_ledger):
    ledger = make_ledger()
    with ledger.engine.begin() as connection:
        ledger_schema.upgrade(connection, "0006")
        insert_old_session(connection)
    ledger.upgrade()
    ledger.check_revision()
    assert ledger.get_session("c1").image == ""
    assert start(ledger, "c2").image == TORCH


def test_downgrading_to_0006_drops_only_the_image(ledger):
    start(ledger)
    with ledger.engine.begin() as connection:
        command.downgrade(ledger_schema.alembic_config(connection), "0006")
    columns = {column["name"] for column in sa.inspect(ledger.engine).get_columns("sessions")}
    assert "image" not in columns and "profile" in columns
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar_one() == 1


def test_a_long_image_name_is_clipped_to_the_column(ledger):
    assert start(ledger, image="n" * 300).image == "n" * 254 + "…"


def test_the_image_shows_in_the_api_json_and_the_csv(ledger):
    session = start(ledger)
    item = usage.SessionUsage(session, 60.0, Decimal(0), Decimal(0)).to_json()
    assert item["image"] == TORCH
    (row,) = usage.export_rows([session], now=at(60))
    assert row["image"] == TORCH
    assert list(row) == list(usage.EXPORT_COLUMNS)
    assert usage.EXPORT_COLUMNS[-2:] == ("image", "node")
