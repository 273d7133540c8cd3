"""Cost of one NVMLSampler tick against the bare pynvml calls it makes.

Runs the real nvidia-ml-py bindings against the stand-in driver library of the
tests (tests/fakenvml, built with gcc), for 1, 8 and 64 GPUs and 0, 8 and 256
compute processes spread over them. Every round gives each process one new
utilization sample, so both sides read samples, not just "none new". The
processes live in a fake /proc tree (Docker cgroup v2 paths), so the tick also
pays for its PID -> container lookups. Tick and bare calls alternate in one run;
the table shows medians, their ratio, and the tick's CPU time as a share of one
core at one tick per second. Usage, from the repository root:

    .venv/bin/python benchmarks/sampler_tick.py [--rounds 300]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.gpus import parse_simulated  # noqa: E402
from jupyter_gpu_meter.sampler import NVMLSampler, SimulatedSampler  # noqa: E402
from tests.fakenvml import FakeNVML, build, load, reset  # noqa: E402

GPU_COUNTS = (1, 8, 64)
PROCESS_COUNTS = (0, 8, 256)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def fake_proc(root: Path, pid: int) -> None:
    folder = root / str(pid)
    folder.mkdir(parents=True)
    fields = ["S"] + ["0"] * 18 + [str(1000 + pid), "0", "0"]
    (folder / "stat").write_text(f"{pid} (python) {' '.join(fields)}\n")
    (folder / "cgroup").write_text(f"0::/system.slice/docker-{pid:064x}.scope\n")


def bare_tick(pynvml, handles, last_seen):
    """The NVML calls of one tick, and nothing else."""
    for i, handle in enumerate(handles):
        pynvml.nvmlDeviceGetUtilizationRates(handle)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
        pynvml.nvmlDeviceGetPowerUsage(handle)
        pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(handle, last_seen[i])
        except pynvml.NVMLError_NotFound:
            continue
        last_seen[i] = max(s.timeStamp for s in samples)


def measure(pynvml, lib, workdir: Path, gpus: int, processes: int, rounds: int):
    reset(lib)
    folder = workdir / f"{gpus}x{processes}"
    proc_root = folder / "proc"
    proc_root.mkdir(parents=True)
    fake = FakeNVML(folder / "state.txt", lib_path=lib)
    os.environ["FAKE_NVML_STATE"] = str(fake.state_path)
    for _ in range(gpus):
        fake.add_gpu(util=50, memory_used=1 << 30, power_mw=300000, temperature=60)
    pids = [10000 + n for n in range(processes)]
    for n, pid in enumerate(pids):
        fake.add_process(n % gpus, pid, used_memory=1 << 28)
        fake_proc(proc_root, pid)
    fake.write()
    sampler = NVMLSampler(proc_root=str(proc_root))
    sampler.open()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]
    last_seen = [0] * gpus
    wall = {"tick": [], "bare": []}
    cpu = {"tick": [], "bare": []}
    warmup = 5
    try:
        for k in range(warmup + rounds):
            fake.samples = [
                (n % gpus, pid, 1_000_000 * (k + 1), 50, 10, 0, 0) for n, pid in enumerate(pids)
            ]
            fake.write()
            pynvml.nvmlDeviceGetCount()  # the fake re-reads its state file here, untimed
            order = ("tick", "bare") if k % 2 else ("bare", "tick")
            for side in order:
                c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                if side == "tick":
                    tick = sampler.sample()
                else:
                    bare_tick(pynvml, handles, last_seen)
                w1, c1 = time.perf_counter_ns(), time.process_time_ns()
                if k >= warmup:
                    wall[side].append((w1 - w0) / 1e9)
                    cpu[side].append((c1 - c0) / 1e9)
            # both sides read this round's samples; the tick mapped every process
            assert len(tick.processes) == processes
            assert all(p.sm_utilization == 50 and p.container_id for p in tick.processes)
    finally:
        sampler.close()
    return {key: statistics.median(values) for key, values in wall.items()}, {
        key: statistics.median(values) for key, values in cpu.items()
    }


def measure_simulated(workdir: Path, gpus: int, rounds: int):
    """One SimulatedSampler tick whose utilization file changed since the last (worst case)."""
    inventory = parse_simulated(str(gpus))
    path = workdir / f"simulated-{gpus}.json"
    sampler = SimulatedSampler(inventory, str(path))
    sampler.open()
    wall, cpu = [], []
    for k in range(5 + rounds):
        path.write_text(json.dumps({gpu.uuid: (k % 100) for gpu in inventory}))
        c0, w0 = time.process_time_ns(), time.perf_counter_ns()
        tick = sampler.sample()
        w1, c1 = time.perf_counter_ns(), time.process_time_ns()
        assert tick.gpus[0].utilization == k % 100
        if k >= 5:
            wall.append((w1 - w0) / 1e9)
            cpu.append((c1 - c0) / 1e9)
    sampler.close()
    return statistics.median(wall), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    import pynvml

    workdir = Path(tempfile.mkdtemp(prefix="jgm-sampler-bench-"))
    lib = build(workdir / "lib")
    load(lib)
    print(f"machine: {cpu_model()}, nproc {len(os.sched_getaffinity(0))}")
    print(
        f"python {platform.python_version()}, nvidia-ml-py {version('nvidia-ml-py')}, "
        f"stand-in libnvidia-ml.so.1, median of {args.rounds} rounds"
    )
    header = (
        f"{'GPUs':>4} {'procs':>5} | {'bare ms':>8} {'tick ms':>8} {'tick/bare':>9} | "
        f"{'tick CPU ms':>11} {'% core @1Hz':>11}"
    )
    print(header)
    print("-" * len(header))
    for gpus in GPU_COUNTS:
        for processes in PROCESS_COUNTS:
            wall, cpu = measure(pynvml, lib, workdir, gpus, processes, args.rounds)
            print(
                f"{gpus:>4} {processes:>5} | {wall['bare'] * 1e3:>8.3f} {wall['tick'] * 1e3:>8.3f} "
                f"{wall['tick'] / wall['bare']:>9.2f} | {cpu['tick'] * 1e3:>11.3f} "
                f"{cpu['tick'] * 100:>11.3f}"
            )
    print()
    print(
        "simulated GPUs (JUPYTER_GPU_METER_SIMULATED_GPUS), utilization file rewritten every tick"
    )
    print(f"{'GPUs':>4} | {'tick ms':>8} | {'tick CPU ms':>11} {'% core @1Hz':>11}")
    for gpus in GPU_COUNTS:
        wall, cpu = measure_simulated(workdir, gpus, args.rounds)
        print(f"{gpus:>4} | {wall * 1e3:>8.3f} | {cpu * 1e3:>11.3f} {cpu * 100:>11.3f}")


if __name__ == "__main__":
    main()
