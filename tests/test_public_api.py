import types

import jupyter_gpu_meter


def test_public_names_are_exported_and_importable():
    assert sorted(jupyter_gpu_meter.__all__) == sorted(
        name
        for name, value in vars(jupyter_gpu_meter).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
    )
    for name in jupyter_gpu_meter.__all__:
        assert getattr(jupyter_gpu_meter, name) is not None


def test_console_script_and_spawner_entry_points():
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == "gpu-docker"]
    assert entry.load() is jupyter_gpu_meter.GPUDockerSpawner
    (script,) = [
        ep for ep in entry_points(group="console_scripts") if ep.name == "jupyter-gpu-meter"
    ]
    from jupyter_gpu_meter.cli import main

    assert script.load() is main
