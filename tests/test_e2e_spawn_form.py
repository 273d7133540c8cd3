"""The spawn page, as a logged-in user posts it: choices, free counts and errors."""

import html
import re

import pytest

from tests.hub import login, post_form

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

H100 = "NVIDIA H100 80GB HBM3"
PROFILES = [
    {"display_name": "CPU only", "slug": "cpu"},
    {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1, "default": True},
    {"display_name": "2 GPUs <fast>", "slug": "gpu-2", "gpus": 2, "description": "<b>DDP</b>"},
]


def text(page: str) -> str:
    """What a person reads: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_form_offers_profiles_with_free_counts_and_starts_the_choice(make_hub):
    hub = make_hub(f"2x{H100}", **{"GPUDockerSpawner.profile_list": PROFILES})
    browser = login(hub, "ada")
    form = browser.get(hub.url + "/hub/spawn", timeout=30).text
    assert re.search(r'value="gpu-1"\s+checked', form)
    shown = text(form)
    assert f"1 GPU — 1 × {H100}, 2 of 2 free" in shown
    assert f"2 GPUs <fast> — 2 × {H100}, 2 of 2 free" in shown  # escaped, shown as text
    assert "&lt;b&gt;DDP&lt;/b&gt;" in form and "<b>DDP" not in form
    assert "CPU only — no GPU" in shown

    response = post_form(browser, hub.url + "/hub/spawn", {"profile": "gpu-1"})
    assert response.ok
    assert hub.wait_for("ada")
    (uuid,) = hub.gpus_held()["ada/"]
    assert hub.seen_inside("ada")["nvidia_visible_devices"] == uuid
    # the server is reachable through the proxy as JupyterLab
    lab = browser.get(hub.url + "/user/ada/lab", timeout=60)
    assert lab.ok and "JupyterLab" in lab.text

    # a second user now sees one GPU fewer, and gets the clear error for two
    bob = login(hub, "bob")
    assert f"2 × {H100}, 1 of 2 free" in text(bob.get(hub.url + "/hub/spawn", timeout=30).text)
    refused = post_form(bob, hub.url + "/hub/spawn", {"profile": "gpu-2"})
    assert refused.status_code == 503
    assert f"not enough free {H100}: 2 requested, 1 of 2 free" in text(refused.text)


def test_form_without_profiles_asks_for_a_count_and_rejects_a_bad_one(make_hub):
    hub = make_hub("2xNVIDIA L4,1xNVIDIA A100")
    browser = login(hub, "ada")
    shown = text(browser.get(hub.url + "/hub/spawn", timeout=30).text)
    assert "GPUs (0 for CPU only, at most 2)" in shown
    assert "NVIDIA L4 (2 of 2 free)" in shown and "NVIDIA A100 (1 of 1 free)" in shown

    refused = post_form(browser, hub.url + "/hub/spawn", {"gpus": "-1", "gpu_model": "NVIDIA L4"})
    assert refused.status_code == 400
    assert "'gpus' must be a whole number from 0 to 2, got '-1'" in text(refused.text)
    assert hub.server_model("ada") is None
