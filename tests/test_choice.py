"""user_options and profiles -> a Choice, or a message that says what is allowed."""

import pytest

from jupyter_gpu_meter.choice import ChoiceError, Profile, parse_profiles, resolve_choice

H100 = "NVIDIA H100 80GB HBM3"
MODELS = {H100: 4, "NVIDIA L4": 2}
PROFILES = parse_profiles(
    [
        {"display_name": "CPU only", "gpus": 0, "mem_limit": "4G"},
        {"display_name": "1 GPU", "slug": "gpu-1", "gpus": 1, "default": True, "cpu_limit": 8},
        {"display_name": "2 H100", "slug": "h100-2", "gpus": 2, "gpu_model": H100},
        {"display_name": "A100", "slug": "a100", "gpus": 1, "gpu_model": "NVIDIA A100"},
    ]
)


def resolve(options, profiles=(), **kwargs):
    return resolve_choice(options, profiles=profiles, models=MODELS, **kwargs)


def test_gpu_count_as_number_or_form_string():
    assert resolve({"gpus": 2}).gpus == 2
    assert resolve({"gpus": " 3 "}).gpus == 3
    assert resolve({"gpus": 0}).gpus == 0


def test_jupyterhub6_body_is_unwrapped():
    assert resolve({"user_options": {"gpus": 1}}).gpus == 1


@pytest.mark.parametrize("bad", [-1, "-1", "two", 1.5, True, None, [1], "5"])
def test_bad_counts_say_the_allowed_range(bad):
    with pytest.raises(ChoiceError, match=r"'gpus' must be a whole number from 0 to 4, got"):
        resolve({"gpus": bad})


def test_per_user_maximum_caps_the_range():
    with pytest.raises(ChoiceError, match="from 0 to 2, got 3"):
        resolve({"gpus": 3}, max_gpus=2)


def test_model_choice():
    assert resolve({"gpus": 2, "gpu_model": "NVIDIA L4"}).gpu_model == "NVIDIA L4"
    with pytest.raises(ChoiceError, match="from 0 to 2, got 3"):
        resolve({"gpus": 3, "gpu_model": "NVIDIA L4"})
    with pytest.raises(
        ChoiceError, match=f"unknown GPU model 'V100'; available: {H100}, NVIDIA L4"
    ):
        resolve({"gpus": 1, "gpu_model": "V100"})


def test_unknown_keys_are_refused_with_the_allowed_ones():
    with pytest.raises(
        ChoiceError, match="unknown option.*'env'.*allowed: gpus, gpu_model, profile"
    ):
        resolve({"gpus": 1, "env": {"NVIDIA_VISIBLE_DEVICES": "all"}})


def test_profiles():
    choice = resolve({"profile": "h100-2"}, PROFILES)
    assert (choice.gpus, choice.gpu_model, choice.profile) == (2, H100, "h100-2")
    cpu = resolve({"profile": "cpu-only"}, PROFILES)
    assert (cpu.gpus, cpu.mem_limit) == (0, "4G")


def test_empty_options_take_the_default_profile_or_default_gpus():
    assert resolve({}, PROFILES).profile == "gpu-1"
    assert resolve({}, PROFILES).cpu_limit == 8
    assert resolve(None, default_gpus=1).gpus == 1
    first = parse_profiles([{"display_name": "Small"}, {"display_name": "Big", "gpus": 1}])
    assert resolve({}, first).profile == "small"


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(
        ChoiceError, match="unknown profile 'huge'; available: cpu-only, gpu-1, h100-2, a100"
    ):
        resolve({"profile": "huge"}, PROFILES)


def test_profile_for_a_missing_model_or_above_the_maximum():
    with pytest.raises(ChoiceError, match="needs NVIDIA A100, which this machine does not have"):
        resolve({"profile": "a100"}, PROFILES)
    with pytest.raises(ChoiceError, match="has 2 GPUs, more than the 1 you may use"):
        resolve({"profile": "h100-2"}, PROFILES, max_gpus=1)


def test_profile_and_count_together_are_refused():
    with pytest.raises(ChoiceError, match="either a 'profile' or 'gpus'"):
        resolve({"profile": "gpu-1", "gpus": 2}, PROFILES)


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"display_name": "x", "gpu": 1}], "unknown key.*gpu; allowed: slug, display_name"),
        ([{"slug": "x"}], "'display_name' is required"),
        ([{"display_name": "A"}, {"display_name": "a"}], "slug 'a' is empty or used twice"),
        ([{"display_name": "x", "gpus": -1}], "'gpus' must be a whole number >= 0"),
        (
            [{"display_name": "a", "default": True}, {"display_name": "b", "default": True}],
            "more than one profile",
        ),
    ],
)
def test_bad_profile_config_names_the_problem(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_profiles(entries)


def test_profile_defaults():
    assert parse_profiles([{"display_name": "My GPU box!"}]) == (
        Profile(slug="my-gpu-box", display_name="My GPU box!"),
    )
