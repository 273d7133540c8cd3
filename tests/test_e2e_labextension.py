"""JupyterLab's status bar in headless Chromium, against a real hub, meter and notebook.

ada starts a 1-GPU server from the image built with the extension
(``JGM_IMAGE=…:labext scripts/build-images``), opens JupyterLab at
``/user/ada/lab``, and the status bar shows, verbatim, the texts the meter's
``api/server-status`` gives for that server (read through the hub with a
token of ada's at the same moments). The meter's clock is moved so that the
idle stop comes within the warning lead time: the warning appears, worded
as the meter words it. A meter that hangs shows "metering unavailable", and
the figures come back when it answers again. Three tabs open for a while
cost the meter at most one call per ``GPUMeterStatus.cache_seconds``. Last,
the server stops under the open tab: "metering unavailable" again.
"""

import json
import os
import re
import signal
import time
from datetime import timedelta

import pytest
import requests

from tests.hub import Hub
from tests.metering import give_money_budget, wait_until
from tests.test_e2e_pages import ARTIFACTS, DOCS_STATIC, chromium  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"
PRICE = "3.60"  # per GPU-hour: a tenth of a cent a second
IDLE_TIMEOUT = 1800  # s; the meter warns from 900 s before (ServerStatus.warn_lead_time)
#: the status bar's texts, by the class of their element
FIELDS = {
    "jp-gpu-meter-gpus": "gpus_text",
    "jp-gpu-meter-utilization": "utilization_text",
    "jp-gpu-meter-memory": "memory_text",
    "jp-gpu-meter-cost": "cost_so_far_text",
    "jp-gpu-meter-price": "price_per_hour_text",
}
#: what the page shows: each field's text, the warnings (policy, text), the item's state
SHOWN = """() => {
  const item = document.querySelector('#jp-gpu-meter-status');
  if (!item) return null;
  const text = cls => item.querySelector('.' + cls)?.textContent ?? null;
  return {
    available: item.dataset.available,
    fields: Object.fromEntries(FIELD_CLASSES.map(cls => [cls, text(cls)])),
    budget: text('jp-gpu-meter-budget'),
    warnings: [...item.querySelectorAll('.jp-gpu-meter-warning')]
      .map(w => [w.dataset.policy, w.textContent]),
    unavailable: text('jp-gpu-meter-unavailable'),
  };
}""".replace("FIELD_CLASSES", json.dumps(list(FIELDS)))


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
        meter_clock=True,
        **{
            "Pricing.prices": {H100: PRICE},
            "Policies.gpu_idle_timeout": IDLE_TIMEOUT,
            # the extension logs each call to the meter at DEBUG: the load is counted there
            "GPUDockerSpawner.args": ["--ServerApp.log_level=DEBUG"],
            "JupyterHub.load_roles": [  # test-admin may create ada's token
                {"name": "test-tokens", "scopes": ["tokens"], "services": ["test-admin"]}
            ],
        },
    )
    try:
        hub.start()
        wait_until(lambda: requests.get(hub.meter_url + "api/health", timeout=5).ok, 60, "meter")
        give_money_budget(hub, "ada", "50")
        assert hub.start_server("ada", {"gpus": 1}).status_code in (201, 202)
        assert hub.server_model("ada")["ready"]
        (uuid,) = hub.gpus_held()["ada/"]
        # idle (0 %), with some memory in use: the idle policy's clock runs
        utilization.write_text(json.dumps({uuid: {"utilization": 0, "memory_used_bytes": 9 << 30}}))
        hub.ada_token = hub.user_token("ada")
        wait_until(lambda: server_status(hub).get("running"), 60, "the meter to see ada's server")
        yield hub
    except BaseException:
        print(hub.logs())
        raise
    finally:
        hub.cleanup()


def server_status(hub) -> dict:
    """ada's server as the meter's api/server-status gives it (through the hub's proxy)."""
    response = requests.get(
        hub.meter_url + "api/server-status",
        headers={"Authorization": f"token {hub.ada_token}"},
        timeout=30,
    )
    return response.json() if response.ok else {}


def expected(status: dict) -> dict:
    """What the status bar must show for the meter's answer `status`."""
    return {
        "available": "true",
        "fields": {cls: status[key] or None for cls, key in FIELDS.items()},
        "budget": (status["budget"] or {}).get("left_text"),
        "warnings": [[d["policy"], d["text"]] for d in status["deadlines"] if d["warn"]],
        "unavailable": None,
    }


class Lab:
    """ada's JupyterLab in a browser window (logged in through the hub's form)."""

    def __init__(self, chromium, hub):  # noqa: F811 (the fixture's name)
        self.context = chromium.new_context(viewport={"width": 1400, "height": 800})
        self.hub = hub
        page = self.page = self.context.new_page()
        page.goto(hub.url + "/hub/login")
        page.fill("#username_input", "ada")
        page.fill("#password_input", "any password")
        page.click("#login_submit")
        page.wait_for_url("**/user/ada/**")  # the hub sends ada to her running server
        self.tabs = [self.open_tab(page)]

    def open_tab(self, page=None):
        page = page or self.context.new_page()
        page.goto(self.hub.url + "/user/ada/lab")
        page.wait_for_selector("#jp-gpu-meter-status", timeout=120_000)
        return page

    def shown(self) -> dict:
        return self.page.evaluate(SHOWN)

    def agrees_with_the_meter(self) -> bool:
        """The meter's answer just before and just after the page was read; the page
        must show one of them (cost moves by the second), or be caught up later."""
        before, shown, after = server_status(self.hub), self.shown(), server_status(self.hub)
        self.last = (before, shown)
        return bool(before) and shown in (expected(before), expected(after))


@pytest.fixture(scope="module")
def lab(chromium, hub):  # noqa: F811 (the fixture's name)
    window = Lab(chromium, hub)
    yield window
    window.context.close()


def screenshot(lab, name: str, *, docs: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    lab.page.screenshot(path=str(ARTIFACTS / name))
    bar = ARTIFACTS / f"statusbar-{name}"
    lab.page.locator("#jp-main-statusbar").screenshot(path=str(bar))
    if docs and os.environ.get("JGM_UPDATE_DOC_SCREENSHOTS") == "1":
        (DOCS_STATIC / f"statusbar-{name}").write_bytes(bar.read_bytes())


def test_the_status_bar_shows_the_meters_texts_for_this_server(hub, lab):
    try:
        wait_until(lab.agrees_with_the_meter, 60, "the status bar to show the meter's texts")
    except AssertionError:
        print("meter, page:", json.dumps(lab.last, indent=1))
        raise
    before, shown = lab.last
    assert shown["fields"]["jp-gpu-meter-gpus"] == f"1 × {H100}"
    assert shown["fields"]["jp-gpu-meter-price"] == "3.60 USD/h"
    assert shown["budget"] and shown["budget"].endswith(" USD")
    # the idle stop is 30 min away, beyond the 15 min lead: no warning yet
    idle = [d for d in before["deadlines"] if d["policy"] == "idle"]
    assert idle and not idle[0]["warn"], before["deadlines"]
    assert shown["warnings"] == []
    screenshot(lab, "labextension.png")


def test_the_warning_appears_when_the_idle_stop_is_near(hub, lab):
    hub.move_meter_clock(hub.meter_now() + timedelta(seconds=IDLE_TIMEOUT - 600))
    try:
        wait_until(
            lambda: lab.agrees_with_the_meter() and lab.last[1]["warnings"],
            60,
            "the idle warning in the status bar",
        )
    except AssertionError:
        print("meter, page:", json.dumps(lab.last, indent=1))
        raise
    ((policy, text),) = lab.last[1]["warnings"]
    assert policy == "idle" and re.fullmatch(r"idle stop in \d+ min", text), text
    warning = lab.page.locator(".jp-gpu-meter-warning")
    # a distinct style: a coloured background, unlike the other texts
    assert warning.evaluate("e => getComputedStyle(e).backgroundColor") not in (
        "rgba(0, 0, 0, 0)",
        lab.page.locator(".jp-gpu-meter-cost").evaluate("e => getComputedStyle(e).backgroundColor"),
    )
    screenshot(lab, "labextension-warning.png", docs=True)


def test_a_hung_meter_shows_metering_unavailable_then_the_figures_again(hub, lab):
    pid = hub.meter_pid()
    assert pid
    os.kill(pid, signal.SIGSTOP)  # the meter neither answers nor refuses: a timeout
    try:
        wait_until(
            lambda: lab.shown()["available"] == "false", 60, "the status bar to give up on it"
        )
        shown = lab.shown()
        assert shown["unavailable"] == "metering unavailable"
        title = lab.page.locator(".jp-gpu-meter-unavailable").get_attribute("title")
        assert title.startswith("the meter did not answer"), title
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lab.agrees_with_the_meter, 60, "the figures to come back")


def meter_calls(hub) -> int:
    """How many times ada's notebook server has asked the meter (its DEBUG log says each)."""
    logs = hub.container_of("ada").logs().decode(errors="replace")
    return logs.count("jupyterlab_gpu_meter: asked the meter")


def test_three_open_tabs_cost_the_meter_one_call_per_cache_period(hub, lab):
    tabs = [lab.open_tab(), lab.open_tab()]  # with the first: three tabs
    asked = []  # the tabs' requests to their server
    for tab in [lab.page, *tabs]:
        tab.on("request", lambda r: asked.append(r.url) if "gpu-meter/status" in r.url else None)
    try:
        window, start = 30.0, meter_calls(hub)
        began = time.monotonic()
        # the load over a stretch of time is what is measured (the wait lets Playwright
        # deliver the tabs' request events, which a time.sleep would hold back)
        lab.page.wait_for_timeout(window * 1000)
        calls, elapsed = meter_calls(hub) - start, time.monotonic() - began
        print(
            f"one notebook server, 3 tabs open for {elapsed:.0f} s: the tabs asked it "
            f"{len(asked) * 60 / elapsed:.1f} times a minute, it asked the meter "
            f"{calls * 60 / elapsed:.1f} times a minute"
        )
        # GPUMeterStatus.cache_seconds = 5 (default): at most one call per 5 s
        assert calls <= elapsed / 5 + 1, (calls, elapsed)
        assert calls >= 1 and len(asked) > calls
    finally:
        for tab in tabs:
            tab.close()


def test_a_stopped_server_shows_metering_unavailable(hub, lab):
    hub.stop_server("ada")
    wait_until(lambda: lab.shown()["available"] == "false", 60, "the status bar to give up")
    title = lab.page.locator(".jp-gpu-meter-unavailable").get_attribute("title")
    assert title.startswith(
        ("this server answered ", "this server's answer is not JSON", "cannot reach this server")
    ), title
