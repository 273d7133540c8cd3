"""A finished session's charge, busy share and energy, as a person sees them.

A real hub with one simulated H100 and the meter; ada starts a 1-GPU server,
the simulated utilization file holds her GPU at 73 % and 3,600 W (the simulated
sampler integrates the power into its energy counter), she stops it, and her page in
headless Chromium shows that finished session's charge next to its busy
share and energy, the same as ``api/usage`` says.
"""

import json
import os
from decimal import Decimal

import pytest
import requests

from jupyter_gpu_meter.ledger import Ledger
from tests.hub import Hub
from tests.metering import closed_session, wait_until
from tests.test_e2e_pages import Person, chromium  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"
#: one watt-hour a second: the simulated sampler integrates the file's power
POWER_WATTS = 3600


@pytest.fixture(scope="module")
def hub(tmp_path_factory, docker_client):
    folder = tmp_path_factory.mktemp("hub")
    utilization = folder / "utilization.json"
    env = {**os.environ, "JUPYTER_GPU_METER_SIMULATED_UTILIZATION": str(utilization)}
    hub = Hub(
        folder / "hub",
        docker_client,
        f"1x{H100}",
        env=env,
        meter=True,
        **{
            "Pricing.prices": {H100: "36.00"},
            "Pricing.currency": "EUR",
            "Pricing.energy_price": "0.30",
        },
    )
    hub.utilization = utilization
    try:
        hub.start()
        wait_until(lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "meter")
        hub.create_users("ada")
        hub.ada_token = hub.user_token("ada")
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


def api_session(hub, session_id: int) -> dict:
    response = requests.get(
        hub.meter_url + "api/usage",
        headers={"Authorization": f"token {hub.ada_token}"},
        timeout=30,
    )
    assert response.ok, response.text
    (item,) = [s for s in response.json()["sessions"]["items"] if s["id"] == session_id]
    return item


def energy_text(item: dict) -> str:
    """The energy cell as the page writes it: kWh, and its charge where it has one."""
    charged = Decimal(item["energy_charge"]["amount"]) != 0
    return item["energy_kwh_text"] + (" " + item["energy_charge"]["text"] if charged else "")


def test_a_finished_sessions_charge_busy_share_and_energy_on_the_page(hub, chromium):  # noqa: F811
    hub.start_server("ada", {"gpus": 1})
    (uuid,) = hub.gpus_held()["ada/"]
    hub.utilization.write_text(
        json.dumps(
            {uuid: {"utilization": 73, "memory_used_bytes": 9 << 30, "power_watts": POWER_WATTS}}
        )
    )
    ledger = Ledger(hub.ledger_url)
    try:
        running = wait_until(
            lambda: next((s for s in ledger.sessions(user="ada") if s.running), None),
            30,
            "ada's running session",
        )

        def busy_ms():
            return ledger.efficiency_of([running.id])[running.id].busy_gpu_ms or 0

        # ten busy seconds at 73 %: the sampler ran and the rollups were written
        wait_until(lambda: busy_ms() >= 7_300, 60, "ten busy seconds in the ledger")
        hub.stop_server("ada")
        closed_session(hub, running.container_id)
    finally:
        ledger.close()

    ada = Person(chromium, hub, "ada")
    try:
        seen = {}

        def page_and_api_agree():
            # the API before and after the page: equal, so the page read the same rollups
            before = api_session(hub, running.id)
            ada.open("")
            row = ada.page.locator(f'#session-history tr[data-session-id="{running.id}"]')
            seen["page"] = {
                name: row.locator(f".gpu-meter-{name}").inner_text().strip()
                for name in ("charge", "busy", "energy")
            }
            seen["api"] = after = api_session(hub, running.id)
            return before == after

        wait_until(page_and_api_agree, 30, "the page and the API to read the same figures")
        page, item = seen["page"], seen["api"]
        assert item["running"] is False
        assert page == {
            "charge": item["charge"]["text"],
            "busy": item["busy_share_text"],
            "energy": energy_text(item),
        }
        # measured, not unknown: busy at most the file's 73 % (the ticks before the
        # file was written were idle); energy from the simulated counter, at most one
        # watt-hour a second of the session (3,600 W; 60 W before the file was written)
        assert 0 < item["busy_share"] <= 0.73
        assert item["busy_source"] == "utilization"
        assert Decimal(item["busy_gpu_seconds"]) >= Decimal("7.3")
        watt_hours = Decimal(item["energy_kwh"]) * 1000
        assert 7 < watt_hours <= Decimal(item["duration_s"]).quantize(Decimal(1)) + 1
        charge = Decimal(item["energy_charge"]["amount"])
        assert abs(charge - Decimal(item["energy_kwh"]) * Decimal("0.30")) <= Decimal("1e-6")
        ada.page.screenshot(path=str(hub.dir / "efficiency-page.png"), full_page=True)
    finally:
        ada.close()
