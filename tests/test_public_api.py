import subprocess
import sys
import types

import pytest

import jupyter_gpu_meter


def test_public_names_are_exported_and_importable():
    public = {
        name
        for name in dir(jupyter_gpu_meter)
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(getattr(jupyter_gpu_meter, name), types.ModuleType)
    }
    assert sorted(jupyter_gpu_meter.__all__) == sorted(public)
    for name in jupyter_gpu_meter.__all__:
        assert getattr(jupyter_gpu_meter, name) is not None
    namespace = {}
    exec(f"from jupyter_gpu_meter import {', '.join(jupyter_gpu_meter.__all__)}", namespace)
    assert namespace["GPUDockerSpawner"] is jupyter_gpu_meter.GPUDockerSpawner
    with pytest.raises(AttributeError, match="has no attribute 'Spawner'"):
        jupyter_gpu_meter.Spawner  # noqa: B018


def test_importing_the_package_does_not_import_the_hub():
    """The SSH client runs as ``python -m jupyter_gpu_meter.ssh_proxy`` for every
    ssh/scp: the package itself must not import JupyterHub (or the spawner) first."""
    code = (
        "import sys, jupyter_gpu_meter.ssh_proxy; "
        "heavy = ('jupyterhub', 'docker', 'sqlalchemy', 'jupyter_gpu_meter.spawner'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_and_spawner_entry_points():
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == "gpu-docker"]
    assert entry.load() is jupyter_gpu_meter.GPUDockerSpawner
    (script,) = [
        ep for ep in entry_points(group="console_scripts") if ep.name == "jupyter-gpu-meter"
    ]
    from jupyter_gpu_meter.cli import main

    assert script.load() is main
