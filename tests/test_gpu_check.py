"""benchmarks/gpu_check.py, the check for a real GPU, run here against the stand-in NVML
with a stand-in load (no PyTorch): it starts, samples, checks and says why it fails."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# Stands in for the PyTorch load: puts itself on GPU 0 of the stand-in NVML, busy,
# with `used` bytes of GPU memory, says it reserved `reserved`, and burns energy.
STAND_IN_LOAD = """
import json, os, sys, time
from tests.fakenvml import FakeNVML
reserved, used = int(sys.argv[1]), int(sys.argv[2])
fake = FakeNVML(os.environ["FAKE_NVML_STATE"])
fake.add_gpu(util=95, energy_mj=10**6, gpm=True, sm_activity=61.5)
fake.add_process(0, os.getpid(), used_memory=used)
fake.write()
print(json.dumps({"memory_reserved": reserved}), flush=True)
for k in range(1, 10**6):
    fake.add_sample(0, os.getpid(), k * 50_000, sm=90)
    fake.add_energy(0, 15_000)
    fake.write()
    time.sleep(0.05)
"""


def run_check(env, *args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(fake_nvml):
    fake_nvml.add_gpu(gpm=True)
    fake_nvml.write()  # a GPU with nothing on it, until the load puts itself there
    return fake_nvml.env({**os.environ, "PYTHONPATH": str(ROOT)})


def stand_in(reserved, used):
    return shlex.join([sys.executable, "-c", STAND_IN_LOAD, str(reserved), str(used)])


def test_help():
    done = run_check(None, "--help")
    assert done.returncode == 0 and "--load-command" in done.stdout


def test_without_a_gpu_it_says_so_and_exits_2(fake_nvml):
    env = fake_nvml.env({**os.environ, "PYTHONPATH": str(ROOT)})  # no state: no driver
    done = run_check(env)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["error"].startswith("no GPU to check: no NVIDIA driver")


def test_a_load_attributed_with_its_memory_and_energy_passes(env):
    load = stand_in(8 << 30, (8 << 30) + (300 << 20))  # the CUDA context on top: +3.7 %
    done = run_check(env, "--seconds", "1", "--interval", "0.1", "--load-command", load)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    attributed, memory, energy = (summary["checks"][k] for k in ("attributed", "memory", "energy"))
    assert attributed["where"] == ["host"] and attributed["sm_utilization_max"] == 90
    assert [name[:6] for name in attributed["name"]] == ["python"]
    assert memory["difference"] == 0.0366
    assert energy["joules"] > 0 and energy["gpm_sm_activity_mean"] == 61.5


def test_memory_off_by_more_than_a_tenth_fails(env):
    load = stand_in(8 << 30, 4 << 30)
    done = run_check(env, "--seconds", "0.5", "--interval", "0.1", "--load-command", load)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["ok"] is False and summary["checks"]["memory"]["ok"] is False
    assert summary["checks"]["attributed"]["ok"] and summary["checks"]["energy"]["ok"]


def test_a_load_that_never_starts_fails(env):
    done = run_check(env, "--start-timeout", "5", "--load-command", "false")
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"].startswith("the load exited with 1")
