"""Check the NVML sampler on a real GPU: a PyTorch matmul load, attributed, measured.

For a machine with an NVIDIA GPU, its driver, PyTorch and nvidia-ml-py (no
Docker, no network needed). It opens the NVML sampler, starts a PyTorch load as
a plain subprocess (a ballast of ``--gib`` GiB and 8192 x 8192 matmuls on
``cuda:0``, which prints its PID and ``torch.cuda.memory_reserved()``), samples
every ``--interval`` seconds for ``--seconds`` seconds, stops the load and
checks:

- the load's PID shows on a GPU, ``where == "host"``, with SM utilization > 0
  in at least one tick;
- its GPU memory (the most NVML reported for it) is within 10 % of the
  memory PyTorch reserved (NVML counts the CUDA context too);
- that GPU's energy counter went up.

It prints one JSON summary (the checks, the GPU, the tick times, the energy
and mean power, GPM SM activity where the GPU has it) and exits 1 when a check
failed, 2 when there is no GPU to check. From the repository root:

    PYTHONPATH=. python benchmarks/gpu_check.py [--seconds 20] [--gib 16]

``--load-command`` runs another load instead of PyTorch's: any command that
prints one JSON line ``{"memory_reserved": <bytes>}`` and then keeps the GPU
busy until it is stopped (the tests use one against the stand-in NVML).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.sampler import WHERE_HOST, NVMLSampler, SamplerUnavailable  # noqa: E402

TORCH_LOAD = """
import json, os, sys, time
import torch
gib, seconds = float(sys.argv[1]), float(sys.argv[2])
device = torch.device("cuda:0")
ballast = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
a = torch.randn(8192, 8192, device=device)
b = torch.randn(8192, 8192, device=device)
c = torch.empty(8192, 8192, device=device)
torch.matmul(a, b, out=c)
torch.cuda.synchronize()
print(json.dumps({"pid": os.getpid(), "memory_reserved": torch.cuda.memory_reserved(device),
                  "device": torch.cuda.get_device_name(device)}), flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(10):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
"""

TOLERANCE = 0.10


def start_load(args) -> subprocess.Popen:
    if args.load_command:
        command = shlex.split(args.load_command)
    else:
        load_seconds = str(args.seconds + args.start_timeout + 30)
        command = [sys.executable, "-c", TORCH_LOAD, str(args.gib), load_seconds]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def first_line(load: subprocess.Popen, timeout: float) -> dict:
    """The load's JSON line, or RuntimeError when it does not come in time."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(load.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not found or not found[0].strip():
        code = load.poll()
        if found and code is None:  # its output closed: it is ending
            try:
                code = load.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        why = f"exited with {code}" if code is not None else f"said nothing in {timeout:.0f} s"
        raise RuntimeError(f"the load {why}")
    line = json.loads(found[0])
    if not isinstance(line.get("memory_reserved"), int):
        raise RuntimeError(f"the load's line has no memory_reserved: {found[0]!r}")
    return line


def check(ticks, pid: int, reserved: int) -> dict:
    """The three checks on the ticks taken while the load ran."""
    mine = [p for tick in ticks for p in tick.processes if p.pid == pid]
    gpus = sorted({p.gpu_uuid for p in mine})
    busy = [p.sm_utilization for p in mine if p.sm_utilization]
    memory = [p.used_memory_bytes for p in mine if p.used_memory_bytes is not None]
    peak = max(memory, default=None)
    energy = [
        (tick.at, gpu.energy_mj)
        for tick in ticks
        for gpu in tick.gpus
        if gpu.uuid in gpus[:1] and gpu.energy_mj is not None
    ]
    joules = (energy[-1][1] - energy[0][1]) / 1000 if len(energy) > 1 else None
    span = (energy[-1][0] - energy[0][0]).total_seconds() if len(energy) > 1 else 0
    activity = [
        gpu.sm_activity
        for tick in ticks
        for gpu in tick.gpus
        if gpu.uuid in gpus[:1] and gpu.sm_activity is not None
    ]
    return {
        "attributed": {
            "ok": bool(mine) and bool(busy) and all(p.where == WHERE_HOST for p in mine),
            "gpus": gpus,
            "ticks_seen": len(mine),
            "where": sorted({p.where for p in mine}),
            "name": sorted({p.name for p in mine}),
            "sm_utilization_max": max(busy, default=None),
        },
        "memory": {
            "ok": peak is not None and abs(peak - reserved) <= TOLERANCE * reserved,
            "nvml_peak_bytes": peak,
            "torch_reserved_bytes": reserved,
            "difference": None if peak is None else round((peak - reserved) / reserved, 4),
        },
        "energy": {
            "ok": joules is not None and joules > 0,
            "joules": joules,
            "mean_watts": round(joules / span, 1) if joules and span else None,
            "gpm_sm_activity_mean": round(statistics.mean(activity), 1) if activity else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Exit status: 0 passed, 1 failed, 2 no GPU."
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to sample")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    parser.add_argument("--gib", type=float, default=16.0, help="the load's ballast, GiB")
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="seconds the load may take to start"
    )
    parser.add_argument("--load-command", help="another load than PyTorch's (see above)")
    args = parser.parse_args()

    sampler = NVMLSampler()
    try:
        sampler.open()
    except SamplerUnavailable as e:
        print(json.dumps({"ok": False, "error": f"no GPU to check: {e}"}))
        return 2
    load = None
    try:
        if not any(gpu.healthy for gpu in sampler.sample().gpus):
            print(json.dumps({"ok": False, "error": "NVML lists no GPU that answers"}))
            return 2
        load = start_load(args)
        try:
            line = first_line(load, args.start_timeout)
        except RuntimeError as e:
            print(json.dumps({"ok": False, "error": str(e)}))
            return 1
        ticks = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            ticks.append(sampler.sample())
            time.sleep(args.interval)
        checks = check(ticks, load.pid, line["memory_reserved"])
        summary = {
            "ok": all(c["ok"] for c in checks.values()),
            "driver": sampler.driver_version,
            "load": line,
            "ticks": len(ticks),
            "tick_ms_median": round(statistics.median(t.duration_s for t in ticks) * 1e3, 3),
            "checks": checks,
        }
        print(json.dumps(summary, indent=2))
        return 0 if summary["ok"] else 1
    finally:
        if load is not None:
            load.kill()
            load.wait()
        sampler.close()


if __name__ == "__main__":
    sys.exit(main())
