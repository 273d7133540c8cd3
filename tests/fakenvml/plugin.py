"""pytest fixtures for the fake NVML library.

Enable with ``pytest_plugins = ["tests.fakenvml.plugin"]`` (or ``-p tests.fakenvml.plugin``).

- ``fake_nvml_lib`` (session): builds ``libnvidia-ml.so.1`` with gcc and loads it into
  the test process, so ``import pynvml; pynvml.nvmlInit()`` talks to the fake.
  Skips the test when there is no C compiler or when a real NVML library was
  already loaded in this process.
- ``fake_nvml`` (function): a fresh :class:`~tests.fakenvml.FakeNVML` whose state
  file lives in ``tmp_path`` and is named by ``$FAKE_NVML_STATE``.  Nothing is
  written until the test calls ``write()``: before that, ``nvmlInit`` fails with
  NVMLError_DriverNotLoaded.  At teardown NVML is shut down and the fake's init
  count reset, so no test inherits another's ``nvmlInit``.
"""

from __future__ import annotations

import contextlib

import pytest

from . import BuildError, FakeNVML, build, load, reset


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory):
    try:
        path = build(tmp_path_factory.mktemp("fakenvml"))
    except BuildError as exc:
        pytest.skip(str(exc))
    try:
        load(path)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return path


@pytest.fixture
def fake_nvml(fake_nvml_lib, tmp_path, monkeypatch):
    reset(fake_nvml_lib)
    fake = FakeNVML(tmp_path / "nvml-state.txt", lib_path=fake_nvml_lib)
    monkeypatch.setenv("FAKE_NVML_STATE", str(fake.state_path))
    yield fake
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        for _ in range(100):  # undo every nvmlInit the test left open
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                break
    with contextlib.suppress(Exception):
        reset(fake_nvml_lib)
