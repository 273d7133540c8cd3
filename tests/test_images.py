"""Image versions: ``allowed_images`` as DockerSpawner 14 reads it, per profile, in the
user's choice and on the spawn form (pure), and the engine's ulimits (pure + one probe)."""

import uuid

import pytest

from jupyter_gpu_meter import images
from jupyter_gpu_meter.choice import ChoiceError, parse_profiles, resolve_choice
from jupyter_gpu_meter.images import ImageChoice, ImageNotAllowed, normalize_allowed
from jupyter_gpu_meter.spawn_form import options_from_form, render_spawn_form
from jupyter_gpu_meter.ulimits import describe, engine_ulimits, exceeds, parse_proc_limits

TORCH28 = "PyTorch 2.9 / CUDA 12.8"
TORCH13 = "PyTorch 2.9 / CUDA 13.0"
ALLOWED = {
    TORCH28: "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime",
    TORCH13: "pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime",
}
DEFAULT = "jupyter-gpu-meter/notebook:latest"
MODELS = {"NVIDIA H100 80GB HBM3": 2}


def choose(options, profiles=(), allowed=ALLOWED, default=DEFAULT):
    return resolve_choice(
        options,
        profiles=parse_profiles(list(profiles)),
        models=MODELS,
        allowed_images=allowed,
        default_image=default,
    )


# --- allowed_images' forms ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, {}),
        ({}, {}),
        ([], {}),
        ("*", "*"),
        (["a:1", "b:2"], {"a:1": "a:1", "b:2": "b:2"}),
        (("a:1",), {"a:1": "a:1"}),
        (ALLOWED, ALLOWED),
    ],
)
def test_allowed_images_take_dockerspawners_forms(value, expected):
    assert normalize_allowed(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("a:1", r"'\*' \(all images\) is the only accepted text, got 'a:1'; use a list, \['a:1'\]"),
        (42, r"allowed_images must be a dict \{display name: image\}.*got int 42"),
        ({"": "a:1"}, r"the display name '' must be non-empty text"),
        ({"A": ""}, r"the image of 'A' must be a non-empty image reference"),
        ({"A": 3}, r"the image of 'A' must be a non-empty image reference.*got 3"),
        ([None], r"the display name None must be non-empty text"),
    ],
)
def test_other_allowed_images_are_refused_naming_the_forms(value, message):
    with pytest.raises(ValueError, match=message):
        normalize_allowed(value)


# --- resolving a user's image -------------------------------------------------------


def test_no_image_asked_runs_the_default_by_its_name_or_reference():
    assert images.resolve_image(None, allowed=ALLOWED, default=DEFAULT) == ImageChoice(
        DEFAULT, DEFAULT
    )
    named = ALLOWED[TORCH13]
    assert images.resolve_image("", allowed=ALLOWED, default=named) == ImageChoice(TORCH13, named)


def test_an_allowed_name_runs_its_reference():
    choice = choose({"gpus": 1, "image": TORCH28})
    assert (choice.image, choice.image_name, choice.gpus) == (ALLOWED[TORCH28], TORCH28, 1)


def test_a_reference_is_not_a_name():
    with pytest.raises(ChoiceError) as caught:
        choose({"image": ALLOWED[TORCH28]})
    assert str(caught.value) == (
        "unknown image 'pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime'; "
        f"allowed: {TORCH28}, {TORCH13}"
    )


def test_an_unknown_long_name_is_shortened_in_the_message():
    with pytest.raises(ChoiceError, match=r"unknown image 'x{80}'…; allowed: PyTorch"):
        choose({"image": "x" * 500})


def test_an_image_that_is_not_text_is_refused_listing_the_names():
    with pytest.raises(ChoiceError, match=r"'image' is the name of an allowed image, as text; "):
        choose({"image": ["a"]})


def test_without_allowed_images_no_image_may_be_chosen():
    with pytest.raises(ChoiceError) as caught:
        choose({"image": DEFAULT}, allowed={})
    assert str(caught.value) == f"choosing an image is not allowed: it runs {DEFAULT}"
    assert choose({}, allowed={}).image_name == DEFAULT


def test_star_allows_any_reference_named_by_itself():
    choice = choose({"image": "any/image:1"}, allowed="*")
    assert (choice.image, choice.image_name) == ("any/image:1", "any/image:1")


def test_an_image_goes_with_a_profile():
    profiles = [{"display_name": "One GPU", "slug": "gpu-1", "gpus": 1}]
    choice = choose({"profile": "gpu-1", "image": TORCH13}, profiles)
    assert (choice.profile, choice.image, choice.image_name) == (
        "gpu-1",
        ALLOWED[TORCH13],
        TORCH13,
    )


def test_a_profiles_own_allowed_images_replace_the_spawners():
    profiles = [
        {"display_name": "Old", "slug": "old", "allowed_images": {"Legacy": "legacy:1"}},
        {"display_name": "New", "slug": "new", "allowed_images": {}, "image": "pinned:2"},
        {"display_name": "Any", "slug": "any"},
    ]
    old = choose({"profile": "old"}, profiles)
    assert (old.image, old.image_name) == ("legacy:1", "Legacy")  # its first, by default
    with pytest.raises(ChoiceError) as caught:
        choose({"profile": "old", "image": TORCH28}, profiles)
    assert str(caught.value) == f"unknown image {TORCH28!r}; allowed for profile 'old': Legacy"
    with pytest.raises(ChoiceError) as caught:
        choose({"profile": "new", "image": "Legacy"}, profiles)
    assert str(caught.value) == (
        "choosing an image is not allowed for profile 'new': it runs pinned:2"
    )
    assert choose({"profile": "new"}, profiles).image == "pinned:2"
    assert choose({"profile": "any", "image": TORCH13}, profiles).image == ALLOWED[TORCH13]


def test_a_profiles_allowed_images_are_checked_with_the_config():
    with pytest.raises(ValueError, match=r"profile #0 \('X'\): 'allowed_images': '\*' \(all"):
        parse_profiles([{"display_name": "X", "allowed_images": "all"}])
    (profile,) = parse_profiles([{"display_name": "X", "allowed_images": ["a:1"]}])
    assert profile.allowed_images == {"a:1": "a:1"}


def test_the_profiles_image_is_its_default_name_where_allowed():
    profiles = [{"display_name": "P", "slug": "p", "image": ALLOWED[TORCH13]}]
    assert choose({"profile": "p"}, profiles).image_name == TORCH13


# --- the spawn form -----------------------------------------------------------------


def test_a_form_offers_images_only_where_there_is_a_choice():
    assert images.offered(ALLOWED) == [TORCH28, TORCH13]
    assert images.offered({"One": "one:1"}) == []
    assert images.offered("*") == []
    assert images.offered({}) == []


def render(**kwargs):
    return render_spawn_form(profiles=(), models={}, prices={"cpu": "free"}, **kwargs)


def test_the_form_shows_an_image_select_with_the_default_preselected():
    html = render(images=[TORCH28, TORCH13], image_default=TORCH13)
    assert 'name="image"' in html
    assert f'<option value="{TORCH13}" selected>' in html
    assert f'<option value="{TORCH28}" >' in html
    assert 'name="image"' not in render(images=[])


def test_each_profile_offers_its_own_images():
    profiles = parse_profiles(
        [
            {"display_name": "A", "slug": "a", "allowed_images": {"X": "x:1", "Y": "y:1"}},
            {"display_name": "B", "slug": "b"},
        ]
    )
    offered = images.offered_per_profile(profiles, {}, DEFAULT)
    assert offered == {"a": ["X", "Y"], "b": []}
    html = render_spawn_form(
        profiles=profiles,
        models={},
        prices={"profiles": {"a": "1", "b": "2"}, "cpu": "free"},
        profile_images=offered,
    )
    assert 'name="image-a"' in html and 'name="image-b"' not in html


def test_the_posted_image_is_the_chosen_profiles():
    form = {"profile": ["a"], "image-a": ["X"], "image-b": ["Z"]}
    assert options_from_form(form) == {"profile": "a", "image": "X"}
    assert options_from_form({"gpus": ["1"], "image": [TORCH28]}) == {
        "gpus": "1",
        "image": TORCH28,
    }


# --- the engine's ulimits -----------------------------------------------------------

LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max stack size            8388608              unlimited            bytes
Max open files            20000                20000                files
Max locked memory         65536                8388608              bytes
Max nice priority         0                    0
"""


def test_proc_limits_are_read_as_docker_names_and_hard_limits():
    assert parse_proc_limits(LIMITS) == {
        "cpu": -1,
        "stack": -1,
        "nofile": 20000,
        "memlock": 8388608,
        "nice": 0,
    }
    with pytest.raises(ValueError, match="not a /proc/<pid>/limits text"):
        parse_proc_limits("cat: /proc/self/limits: No such file")


def test_memlock_left_out_gets_the_most_the_engine_grants():
    engine = parse_proc_limits(LIMITS)
    assert engine_ulimits({"stack": 67108864}, engine) == {"stack": 67108864, "memlock": 8388608}
    assert engine_ulimits({}, {**engine, "memlock": -1}) == {"memlock": -1}


def test_an_explicit_memlock_is_kept_within_the_engines_limit():
    engine = parse_proc_limits(LIMITS)
    assert engine_ulimits({"memlock": 4096}, engine) == {"memlock": 4096}
    assert engine_ulimits({"memlock": -1}, {"memlock": -1}) == {"memlock": -1}
    # nofile is not compared: Docker may set it lower by default than the engine could
    assert engine_ulimits({"nofile": 10**6}, engine)["nofile"] == 10**6


@pytest.mark.parametrize("value", [-1, 8388609])
def test_an_explicit_memlock_above_the_engines_limit_is_refused_saying_what_to_set(value):
    with pytest.raises(ValueError) as caught:
        engine_ulimits({"memlock": value}, parse_proc_limits(LIMITS))
    assert f"c.GPUDockerSpawner.ulimits['memlock'] = {describe(value)} is more than" in str(
        caught.value
    )
    assert "its hard limit is 8388608 bytes (8192 KiB)" in str(caught.value)
    assert "Set it to at most 8388608, or leave 'memlock' out" in str(caught.value)


def test_limits_compare_and_read_as_words():
    assert exceeds(-1, 10) and exceeds(11, 10) and not exceeds(10, 10) and not exceeds(-1, -1)
    assert describe(-1) == "unlimited (-1)" and describe(1000) == "1000"


@pytest.mark.docker
def test_a_probe_container_reads_the_engines_limits_and_is_removed(docker_client):
    from jupyter_gpu_meter.spawner_checks import probe_limits
    from tests.hub import IMAGE

    # the probes run under a tag of the test image that only this test uses, so the
    # containers of other tests running meanwhile (pytest-xdist) are not counted
    tag = f"jgm-probe-test:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(IMAGE).tag(tag)

    def probes():
        listed = docker_client.containers.list(all=True, ignore_removed=True)
        return [c for c in listed if c.attrs["Config"]["Image"] == tag]

    try:
        found = parse_proc_limits(probe_limits(docker_client.api, tag, "1000:100"))
        assert "memlock" in found and "stack" in found
        with pytest.raises(Exception, match="(?i)user"):  # no such user: Docker refuses it
            probe_limits(docker_client.api, tag, "no-such-user-jgm")
        assert probes() == []
    finally:
        docker_client.images.remove(tag)


def test_a_refusal_is_an_image_not_allowed():
    with pytest.raises(ImageNotAllowed):
        images.resolve_image("x", allowed={"a": "a"}, default="a")


# --- DockerSpawner 14's own form tests, ported ----------------------------------------


def test_default_options_form():
    """Ported from jupyterhub/dockerspawner tests/test_dockerspawner.py::test_default_options_form
    (commit 785a752): one allowed image, no choice; two, a select of both names. Our
    form is the GPU form, so what it offers is checked, and the select in its HTML."""
    from jupyter_gpu_meter import GPUDockerSpawner

    spawner = GPUDockerSpawner()
    spawner.allowed_images = {"1.0": "jupyterhub/singleuser:1.0"}
    assert images.offered(spawner.allowed_image_choices()) == []
    spawner.allowed_images["1.1"] = "jupyterhub/singleuser:1.1"
    offered = images.offered(spawner.allowed_image_choices())
    assert offered == ["1.0", "1.1"]
    html = render(images=offered)
    assert '<option value="1.0" >1.0</option>' in html
    assert '<option value="1.1" >1.1</option>' in html


def test_options_from_form():
    """Ported from jupyterhub/dockerspawner tests/test_dockerspawner.py::test_options_from_form
    (commit 785a752), unchanged but for the class."""
    from traitlets.config import Config

    from jupyter_gpu_meter import GPUDockerSpawner

    spawner = GPUDockerSpawner()
    formdata = {"image": ["1.0", "1.1"]}
    assert spawner.options_from_form(formdata) == {"image": "1.0"}

    config = Config()
    config.DockerSpawner.options_from_form = lambda formdata: {"ok": True}
    spawner = GPUDockerSpawner(config=config)
    assert spawner.options_from_form(formdata) == {"ok": True}


def test_a_callable_answering_none_of_the_forms_is_a_500_naming_them():
    from jupyter_gpu_meter import GPUDockerSpawner

    spawner = GPUDockerSpawner()
    spawner.allowed_images = lambda spawner: 42
    with pytest.raises(Exception) as caught:
        spawner.allowed_image_choices()
    assert caught.value.status_code == 500
    assert caught.value.jupyterhub_message.startswith(
        "c.GPUDockerSpawner.allowed_images must be a dict {display name: image}"
    )
    spawner.allowed_images = lambda spawner: None  # as DockerSpawner: no choice
    assert spawner.allowed_image_choices() == {}
