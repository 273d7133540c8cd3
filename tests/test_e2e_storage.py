"""Storage billed by use through a real hub's meter: a home with no server costs, then stops.

The hub runs its meter (measuring every second here); the test gives user
ada a labelled home volume of this hub holding a sparse 10 GB file (no disk
used, 10 GB billed: the apparent size), and reads what the meter recorded
through the API, as ada would, with no server running.
"""

import secrets
from decimal import Decimal

import docker.errors
import pytest
import requests

from jupyter_gpu_meter.clock import utcnow
from jupyter_gpu_meter.homes import HOME, volume_labels
from jupyter_gpu_meter.ledger import Ledger
from tests.hub import IMAGE
from tests.metering import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

GB = 10**9


def test_a_home_without_a_server_is_billed_until_it_is_deleted(make_hub, docker_client):
    hub_id = "jgmtest-e2e-" + secrets.token_hex(3)
    name = f"{hub_id}-home-ada"
    docker_client.api.create_volume(
        name=name, labels=volume_labels(HOME, user="ada", hub_id=hub_id, created=utcnow())
    )
    try:
        docker_client.containers.run(
            IMAGE,
            ["sh", "-ec", "truncate -s 10000000000 /v/big"],
            user="0",
            entrypoint=[],
            network_mode="none",
            volumes={name: {"bind": "/v", "mode": "rw"}},
            remove=True,
        )
        # the hub starts once the home holds its file: every period the meter
        # measures is then 10 GB (a measurement taken before the file was
        # written would bill its period at 0 bytes, not at 10 GB)
        hub = make_hub(
            "1",
            meter=True,
            **{
                "HubIdentity.hub_id": hub_id,
                "MeterService.storage_interval": 1,
                "Pricing.storage_price": "0.10",
                "Pricing.currency": "EUR",
            },
        )
        session = requests.Session()
        session.headers["Authorization"] = f"token {hub.user_token('ada')}"

        def usage():
            response = session.get(hub.meter_url + "api/usage", timeout=30)
            assert response.status_code == 200, response.text
            return response.json()

        def charged():
            data = usage()
            volumes = data["storage_now"]["volumes"]
            amount = data["all_time"]["storage"]["charges"]
            if volumes and volumes[0]["size_bytes"] == 10 * GB and amount:
                return Decimal(amount[0]["amount"])
            return None

        first = wait_until(charged, 60, "a storage charge")
        grown = wait_until(lambda: (charged() or 0) > first and charged(), 60, "the charge to grow")
        assert usage()["all_time"]["sessions"] == 0  # no server ever ran
        # GB-hours match the size over the time measured, and the charge the price
        with Ledger(hub.ledger_url) as ledger:
            periods = ledger.storage_periods(user="ada")
            [total] = ledger.storage_sums(user="ada")
        assert {p.size_bytes for p in periods} == {10 * GB}
        hours = sum((p.ended_at - p.started_at).total_seconds() for p in periods) / 3600
        assert abs(float(total.gb_hours) - 10 * hours) <= 0.05 * 10 * hours
        assert grown > first and total.currency == "EUR"

        docker_client.api.remove_volume(name)
        wait_until(lambda: not usage()["storage_now"]["volumes"], 60, "the home to be gone")
        after = usage()["all_time"]["storage"]["charges"]
        measured = usage()["storage_now"]["measured_at"]
        wait_until(lambda: usage()["storage_now"]["measured_at"] != measured, 60, "a measurement")
        assert usage()["all_time"]["storage"]["charges"] == after  # the charge stopped
    finally:
        try:
            docker_client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
