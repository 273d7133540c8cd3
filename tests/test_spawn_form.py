"""The spawn form as a pure function: inputs in, HTML out; no hub, no Docker."""

from jupyter_gpu_meter.choice import parse_profiles
from jupyter_gpu_meter.gpus import GPU
from jupyter_gpu_meter.spawn_form import model_counts, options_from_form, render_spawn_form

H100 = "NVIDIA H100 80GB HBM3"
L4 = "NVIDIA L4"
PRICES = {
    "profiles": {"cpu": "0.00 USD/hour", "gpu-1": "2.49 USD/hour"},
    "models": {H100: "2.49 USD/GPU-hour", L4: "0.80 USD/GPU-hour"},
    "cpu": "0.00 USD/hour",
}


def test_counts_free_healthy_gpus_per_model():
    gpus = [
        GPU("GPU-0", 0, H100),
        GPU("GPU-1", 1, H100),
        GPU("GPU-2", 2, H100, healthy=False),
        GPU("GPU-3", 3, L4),
    ]
    assert model_counts(gpus, {"GPU-1"}) == {H100: (3, 1), L4: (1, 1)}


def test_profiles_with_what_is_free_their_price_and_the_budget():
    profiles = parse_profiles(
        [
            {"display_name": "CPU", "slug": "cpu", "gpus": 0},
            {"display_name": "One GPU", "slug": "gpu-1", "gpus": 1, "default": True},
        ]
    )
    page = render_spawn_form(
        profiles=profiles,
        models={H100: (2, 1)},
        prices=PRICES,
        budget_left="12.50 of 50.00 USD (since Nov 1, UTC)",
    )
    assert 'value="gpu-1" checked' in page
    assert f"1 &times; {H100},\n          1 of 2 free" in page
    assert "2.49 USD/hour" in page
    assert "Budget left: 12.50 of 50.00 USD (since Nov 1, UTC)" in page
    # the last choice is preselected; no budget: no budget line
    page = render_spawn_form(
        profiles=profiles, models={H100: (2, 1)}, prices=PRICES, user_options={"profile": "cpu"}
    )
    assert 'value="cpu" checked' in page and "Budget left" not in page


def test_a_gpu_count_up_to_the_per_user_maximum_and_a_model_choice():
    page = render_spawn_form(
        profiles=[], models={H100: (4, 3), L4: (2, 0)}, prices=PRICES, max_gpus_per_user=2
    )
    assert 'max="2"' in page and "at most 2" in page
    assert f"{H100} (3 of 4 free) &middot; 2.49 USD/GPU-hour" in page
    assert f"{L4} (0 of 2 free)" in page
    assert 'max="4"' in render_spawn_form(profiles=[], models={H100: (4, 3)}, prices=PRICES)


def test_the_form_posts_the_options_the_spawner_validates():
    assert options_from_form({"profile": [" gpu-1 "], "datasets": ["a", " ", "b"]}) == {
        "profile": "gpu-1",
        "datasets": ["a", "b"],
    }
    assert options_from_form({"gpus": ["2"], "gpu_model": [L4], "snapshot": ["s1"]}) == {
        "gpus": "2",
        "gpu_model": L4,
        "snapshot": "s1",
    }
