import jupyter_gpu_meter


def test_public_names_are_exported_and_importable():
    assert sorted(jupyter_gpu_meter.__all__) == sorted(
        name
        for name in dir(jupyter_gpu_meter)
        if not name.startswith("_") or name == "__version__"
        if name not in {"allocation", "choice", "container", "gpus", "labels", "spawner"}
    )
    for name in jupyter_gpu_meter.__all__:
        assert getattr(jupyter_gpu_meter, name) is not None


def test_spawner_entry_point():
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == "gpu-docker"]
    assert entry.load() is jupyter_gpu_meter.GPUDockerSpawner
