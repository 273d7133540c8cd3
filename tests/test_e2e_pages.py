"""The usage pages as a person sees them: headless Chromium through a real hub.

Debian's chromium, driven by Playwright (never `playwright install`). One hub
for the module: finished sessions of ada, bob and a user whose name is an
HTML tag are written into the meter's ledger; ada's server runs for real.
Screenshots go to test-artifacts/; with JGM_UPDATE_DOC_SCREENSHOTS=1 the user
and admin pages' also replace those in docs/_static/.
"""

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from jupyter_gpu_meter.ledger import Ledger
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.usage import format_charges, format_money
from tests.hub import Hub
from tests.metering import add_closed_session, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
H100 = "NVIDIA H100 80GB HBM3"
PRICE = "36.00"  # per GPU-hour: a cent a second
#: how the sessions written into the ledger were priced
OLD = {"pricing": Pricing(prices={H100: PRICE}, currency="EUR"), "gpu_model": H100}
HOSTILE = "<img src=x onerror=alert(1)>"
ARTIFACTS = Path(os.environ.get("JGM_ARTIFACTS", "test-artifacts"))
DOCS_STATIC = Path(__file__).resolve().parent.parent / "docs" / "_static"
PROFILES = [
    {"display_name": "CPU only", "slug": "cpu"},
    {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1, "default": True},
    {"display_name": "2 GPUs", "slug": "gpu-2", "gpus": 2},
]


def screenshot(page, name: str, *, docs: bool = False):
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("JGM_UPDATE_DOC_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS_STATIC / name)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory, docker_client):
    folder = tmp_path_factory.mktemp("hub")
    utilization = folder / "utilization.json"
    env = {**os.environ, "JUPYTER_GPU_METER_SIMULATED_UTILIZATION": str(utilization)}
    hub = Hub(
        folder / "hub",
        docker_client,
        f"2x{H100}",
        env=env,
        meter=True,
        **{
            "Pricing.prices": {H100: PRICE},
            "Pricing.currency": "EUR",
            "UsagePages.refresh_interval": 1.0,
            "GPUDockerSpawner.profile_list": PROFILES,
            "JupyterHub.load_roles": [  # test-admin may create ada's token
                {"name": "test-tokens", "scopes": ["tokens"], "services": ["test-admin"]}
            ],
        },
    )
    try:
        hub.start()
        wait_until(lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "meter")
        now = datetime.now(timezone.utc).replace(microsecond=0)
        shape = [10, 35, 80, 95, 90, 60, 85, 97, 40, 15]
        add_closed_session(
            hub.ledger_url, "ada", now - timedelta(days=6), 2, utilization=shape, **OLD
        )
        add_closed_session(hub.ledger_url, "bob", now - timedelta(days=3), 1.5, gpus=2, **OLD)
        add_closed_session(hub.ledger_url, HOSTILE, now - timedelta(days=1), 0.5, **OLD)
        hub.create_users("ada", "bob", HOSTILE)
        hub.start_server("ada", {"profile": "gpu-1"})
        (uuid,) = hub.gpus_held()["ada/"]
        utilization.write_text(
            json.dumps({uuid: {"utilization": 73, "memory_used_bytes": 9 << 30}})
        )
        wait_until(
            lambda: any(s.running for s in Ledger(hub.ledger_url).sessions(user="ada")),
            30,
            "ada's running session",
        )
        hub.ada_token = hub.user_token("ada")
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup does)"
        if os.environ.get("JGM_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Person:
    """A browser window logged in to the hub through its login form."""

    def __init__(self, chromium, hub, user, *, width=1280, height=900):
        self.context = chromium.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.dialogs = []
        self.page.on(
            "dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss())
        )
        self.hub = hub
        self.page.goto(hub.url + "/hub/login?next=%2Fhub%2Fhome")
        self.page.fill("#username_input", user)
        self.page.fill("#password_input", "any password")
        self.page.click("#login_submit")
        self.page.wait_for_url("**/hub/home")

    def open(self, path):
        return self.page.goto(self.hub.meter_url + path)

    def close(self):
        self.context.close()


@pytest.fixture
def person(chromium, hub):
    people = []

    def log_in(user, **viewport):
        people.append(Person(chromium, hub, user, **viewport))
        return people[-1]

    yield log_in
    for someone in people:
        someone.close()


def api_usage(hub):
    response = requests.get(
        hub.meter_url + "api/usage",
        headers={"Authorization": f"token {hub.ada_token}"},
        timeout=30,
    )
    assert response.ok, response.text
    return response.json()


def charges_of(totals) -> dict:
    return {item["currency"]: Decimal(item["amount"]) for item in totals["charges"]}


def shown_amount(text: str) -> Decimal:
    return Decimal(text.split()[0].replace(",", ""))


def test_a_user_sees_the_apis_numbers_and_the_running_cost_grows_without_a_reload(hub, person):
    before = api_usage(hub)
    ada = person("ada")
    response = ada.open("")
    assert response.status == 200
    page = ada.page
    page.evaluate("window.__not_reloaded = true")
    finished = before["sessions"]["items"][-1]
    row = page.locator(f'#session-history tr[data-session-id="{finished["id"]}"]')
    assert row.locator(".gpu-meter-charge").inner_text() == format_money(
        Decimal(finished["charge"]["amount"]), "EUR"
    )
    assert row.locator("svg.gpu-meter-sparkline").count() == 1
    assert page.locator("svg.gpu-meter-chart rect.gpu-meter-bar").count() == 30
    bars = {
        bar.get_attribute("data-day"): Decimal(bar.get_attribute("data-value"))
        for bar in page.locator("svg.gpu-meter-chart rect.gpu-meter-bar").all()
    }
    for day in before["daily_gpu_hours"][:-1]:  # today's grows while ada's server runs
        assert bars[day["date"]] == Decimal(day["gpu_hours"])

    (running,) = before["running"]
    cost = page.locator(f'#running-sessions tr[data-session-id="{running["id"]}"] .gpu-meter-cost')
    first = shown_amount(cost.inner_text())
    wait_until(lambda: shown_amount(cost.inner_text()) > first, 20, "the running cost to grow")
    assert page.evaluate("window.__not_reloaded") is True
    shown = shown_amount(page.locator("#all-charges").inner_text())
    after = api_usage(hub)
    low = charges_of(before["all_time"])["EUR"].quantize(Decimal("0.01"))
    high = charges_of(after["all_time"])["EUR"].quantize(Decimal("0.01"))
    assert low <= shown <= high
    assert page.locator("#month-gpu-hours").inner_text() != ""
    assert ada.dialogs == []
    screenshot(page, "usage-page.png", docs=True)


def test_the_user_page_fits_a_phone(hub, person):
    ada = person("ada", width=390, height=844)
    ada.open("")
    overflow = ada.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    screenshot(ada.page, "usage-page-phone.png")


def test_the_hub_links_the_page_and_the_spawn_form_shows_prices(hub, person):
    bob = person("bob")
    page = bob.page
    page.click("#gpu-meter-nav-link")
    page.wait_for_url(hub.meter_url)
    assert page.locator("h1").inner_text() == "GPU usage"
    assert page.locator("#running-sessions tbody tr").count() == 0
    assert page.locator("#no-running").is_visible()
    page.goto(hub.url + "/hub/spawn")
    prices = {
        badge.get_attribute("data-profile"): badge.inner_text()
        for badge in page.locator(".gpu-meter-price").all()
    }
    assert prices == {"cpu": "no charge", "gpu-1": "36.00 EUR/hour", "gpu-2": "72.00 EUR/hour"}
    screenshot(page, "spawn-page.png")


def test_a_user_gets_403_on_the_admin_page(hub, person):
    bob = person("bob")
    response = bob.open("admin")
    assert response.status == 403
    assert (
        "the admin page is for hub admins"
        in bob.page.locator("#gpu-meter-error-message").inner_text()
    )


def test_a_name_that_is_html_shows_as_text(hub, person):
    someone = person(HOSTILE)
    someone.open("")
    assert someone.page.locator("img[src='x']").count() == 0
    assert HOSTILE in someone.page.locator("#login_widget").inner_text()
    assert someone.page.locator("#session-history tbody tr").count() == 1
    assert someone.dialogs == []


def test_the_admin_sees_everyone_and_every_gpu_and_can_stop_a_server(hub, person):
    admin = person("admin")
    response = admin.open("admin?since=&until=")
    assert response.status == 200
    page = admin.page
    users = [row.get_attribute("data-user") for row in page.locator("#users-table tbody tr").all()]
    assert users == ["bob", "ada", HOSTILE]  # by GPU-hours: 3, 2 + running, 0.5
    assert page.locator("img[src='x']").count() == 0
    hostile_row = page.locator("#users-table tbody tr").nth(2)
    assert hostile_row.locator(".gpu-meter-user").inner_text() == HOSTILE
    bob_row = page.locator('#users-table tr[data-user="bob"]')
    assert bob_row.locator(".gpu-meter-charges").inner_text() == format_charges(
        {"EUR": Decimal("108")}, "EUR"
    )  # 1.5 h x 2 GPUs x 36
    (uuid,) = hub.gpus_held()["ada/"]
    gpu = page.locator(f'#gpus-table tr[data-uuid="{uuid}"]')
    assert "ada" in gpu.inner_text()
    wait_until(lambda: "73%" in gpu.inner_text(), 20, "the live GPU utilization")
    assert (
        page.locator("#csv-download")
        .get_attribute("href")
        .startswith("/services/gpu-meter/api/export.csv")
    )
    screenshot(page, "admin-page.png", docs=True)

    page.click('#users-table a[data-sort="user"]')
    users = [row.get_attribute("data-user") for row in page.locator("#users-table tbody tr").all()]
    assert users == sorted(users)

    page.click('#users-table tr[data-user="ada"] button.gpu-meter-stop')
    page.wait_for_selector("#gpu-meter-stopped")
    assert "ada/" in page.locator("#gpu-meter-stopped").inner_text()
    wait_until(lambda: hub.server_model("ada") is None, 60, "ada's server to stop")
    assert admin.dialogs == []


def test_a_user_adds_and_removes_an_ssh_key_on_the_page(hub, person):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdIW6O9r1gFVE64aGqkWeUhD5hXFqSPUO9xVt8K2v3u"
    fingerprint = "SHA256:P/YIw9Lg6C8yOZvrIQvFOIwCQ2BrskTtPMW3U+27+Bw"
    ada = person("ada")
    ada.open("")
    ada.page.fill("#ssh-key", f'command="sh" {key}')
    ada.page.click("#add-ssh-key button[type=submit]")
    assert "not done: options before the key type" in ada.page.inner_text("#ssh-message")
    ada.page.fill("#ssh-key", f"{key} ada@laptop\n")
    ada.page.click("#add-ssh-key button[type=submit]")
    assert ada.page.inner_text("#ssh-message") == f"key {fingerprint} added"
    assert fingerprint in ada.page.inner_text("#ssh-keys-table")
    # through the hub's proxy: the address the browser used, the server's path under it
    snippet = ada.page.inner_text(".gpu-meter-ssh-config")
    assert f"ProxyCommand jupyter-gpu-meter-ssh {hub.url}/user/ada/" in snippet
    assert f"pip install {hub.url}/services/gpu-meter/ssh/" in ada.page.inner_text("#ssh-pip")
    screenshot(ada.page, "usage-page-ssh.png")
    ada.page.click(".gpu-meter-remove-key")
    assert ada.page.inner_text("#ssh-message") == f"key {fingerprint} removed"
    assert "No SSH keys." in ada.page.inner_text("#ssh-keys-table")
