"""Cost of one NVMLSampler tick against the bare pynvml calls it makes.

Runs the real nvidia-ml-py bindings against the stand-in driver library of the
tests (tests/fakenvml, built with gcc), for 1, 8 and 64 GPUs and 0, 8 and 256
compute processes spread over them. Every round gives each process one new
utilization sample, so both sides read samples, not just "none new". The GPUs
have an energy counter and GPM (as H100s do; ``--no-gpm``: without), so both
sides read those too. The processes live in a fake /proc tree (Docker cgroup v2
paths), so the tick also attributes each process (container, where, name). Tick
and bare calls alternate in one run; the table shows medians, their ratio, and
the tick's CPU time as a share of one core at one tick per second.

Then the attribution's own cost per process, apart from NVML: the first sight
of a PID (cold: stat, cgroup, stat again), a PID seen before (its start time
read again, the rest cached), and a PID the previous tick listed (no /proc read),
on the fake /proc tree and on real processes (``sleep``) in the real /proc.
Usage, from the repository root:

    .venv/bin/python benchmarks/sampler_tick.py [--rounds 300] [--no-gpm]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from jupyter_gpu_meter.gpus import parse_simulated  # noqa: E402
from jupyter_gpu_meter.sampler import ContainerLookup, NVMLSampler, SimulatedSampler  # noqa: E402
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


class BareGpm:
    """The GPM calls of one tick on one GPU: two samples alternated, one metrics request."""

    def __init__(self, pynvml):
        self.samples = [pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()]
        self.next = 0
        self.taken = 0
        self.request = pynvml.c_nvmlGpmMetricsGet_t()
        self.request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        self.request.numMetrics = 1
        self.request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL

    def tick(self, pynvml, handle):
        current = self.samples[self.next]
        pynvml.nvmlGpmSampleGet(handle, current)
        self.next ^= 1
        self.taken += 1
        if self.taken > 1:
            self.request.sample1, self.request.sample2 = self.samples[self.next], current
            pynvml.nvmlGpmMetricsGet(self.request)

    def free(self, pynvml):
        for sample in self.samples:
            pynvml.nvmlGpmSampleFree(sample)


def bare_tick(pynvml, handles, last_seen, gpm=None):
    """The NVML calls of one tick, and nothing else."""
    for i, handle in enumerate(handles):
        pynvml.nvmlDeviceGetUtilizationRates(handle)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
        pynvml.nvmlDeviceGetPowerUsage(handle)
        pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        if gpm:
            gpm[i].tick(pynvml, handle)
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(handle, last_seen[i])
        except pynvml.NVMLError_NotFound:
            continue
        last_seen[i] = max(s.timeStamp for s in samples)


def measure(pynvml, lib, workdir: Path, gpus: int, processes: int, rounds: int, gpm: bool = True):
    reset(lib)
    folder = workdir / f"{gpus}x{processes}"
    proc_root = folder / "proc"
    proc_root.mkdir(parents=True)
    fake = FakeNVML(folder / "state.txt", lib_path=lib)
    os.environ["FAKE_NVML_STATE"] = str(fake.state_path)
    for _ in range(gpus):
        fake.add_gpu(
            util=50,
            memory_used=1 << 30,
            power_mw=300000,
            temperature=60,
            energy_mj=10**9,
            gpm=gpm,
            sm_activity=42.0,
        )
    pids = [10000 + n for n in range(processes)]
    for n, pid in enumerate(pids):
        fake.add_process(n % gpus, pid, used_memory=1 << 28)
        fake_proc(proc_root, pid)
    fake.write()
    sampler = NVMLSampler(proc_root=str(proc_root))
    sampler.open()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]
    last_seen = [0] * gpus
    bare_gpm = [BareGpm(pynvml) for _ in handles] if gpm else None
    wall = {"tick": [], "bare": []}
    cpu = {"tick": [], "bare": []}
    warmup = 5
    try:
        for k in range(warmup + rounds):
            fake.samples = [
                (n % gpus, pid, 1_000_000 * (k + 1), 50, 10, 0, 0) for n, pid in enumerate(pids)
            ]
            order = ("tick", "bare") if k % 2 else ("bare", "tick")
            for side in order:
                # the same state again before each side, so that each starts as cold as
                # the other (as a tick at 1 Hz does): the side that runs second would
                # otherwise find the NVML calls' code warm, the side that runs first not
                fake.write()
                pynvml.nvmlDeviceGetCount()  # the fake re-reads its state file here, untimed
                c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                if side == "tick":
                    tick = sampler.sample()
                else:
                    bare_tick(pynvml, handles, last_seen, bare_gpm)
                w1, c1 = time.perf_counter_ns(), time.process_time_ns()
                if k >= warmup:
                    wall[side].append((w1 - w0) / 1e9)
                    cpu[side].append((c1 - c0) / 1e9)
            # both sides read this round's samples; the tick mapped every process
            assert len(tick.processes) == processes
            assert all(p.sm_utilization == 50 and p.container_id for p in tick.processes)
            assert all(p.where == "container" and p.name == "python" for p in tick.processes)
            assert all(g.energy_mj == 10**9 for g in tick.gpus)
            assert all(g.sm_activity == (42.0 if gpm and k else None) for g in tick.gpus)
    finally:
        for one in bare_gpm or ():
            one.free(pynvml)
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


def per_pid_us(lookup_each, pids, rounds: int) -> float:
    """Median over ``rounds`` of the time ``lookup_each(pid)`` takes per PID, in µs."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for pid in pids:
            lookup_each(pid)
        times.append((time.perf_counter_ns() - t0) / len(pids) / 1000)
    return statistics.median(times)


def attribution_costs(proc_root: str, pids: list[int], rounds: int) -> dict[str, float]:
    """Per-process µs: first sight (cold), seen before (cached), listed by the previous tick."""
    cold = []
    for _ in range(rounds):
        fresh = ContainerLookup()
        cold.append(per_pid_us(partial(fresh.attribution, proc_root=proc_root), pids, 1))
    lookup = ContainerLookup()
    previous = {pid: lookup.attribution(pid, proc_root) for pid in pids}
    return {
        "cold": statistics.median(cold),
        "cached": per_pid_us(lambda pid: lookup.attribution(pid, proc_root), pids, rounds),
        "previous tick": per_pid_us(previous.get, pids, rounds),
    }


def measure_attribution(workdir: Path, processes: int, rounds: int):
    """The attribution's costs on the fake /proc tree and on real ``sleep`` processes."""
    root = workdir / "attribution-proc"
    pids = [20000 + n for n in range(processes)]
    for pid in pids:
        fake_proc(root, pid)
    fake = attribution_costs(str(root), pids, rounds)
    children = [subprocess.Popen(["sleep", "600"]) for _ in range(processes)]
    try:
        real = attribution_costs("/proc", [child.pid for child in children], rounds)
        assert all(ContainerLookup().attribution(c.pid).where == "host" for c in children)
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
    return fake, real


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--no-gpm", dest="gpm", action="store_false", help="GPUs without GPM (before Hopper)"
    )
    args = parser.parse_args()
    import pynvml

    workdir = Path(tempfile.mkdtemp(prefix="jgm-sampler-bench-"))
    lib = build(workdir / "lib")
    load(lib)
    print(f"machine: {cpu_model()}, nproc {len(os.sched_getaffinity(0))}")
    print(
        f"python {platform.python_version()}, nvidia-ml-py {version('nvidia-ml-py')}, "
        f"stand-in libnvidia-ml.so.1, median of {args.rounds} rounds, "
        f"GPM {'on' if args.gpm else 'off'}"
    )
    header = (
        f"{'GPUs':>4} {'procs':>5} | {'bare ms':>8} {'tick ms':>8} {'tick/bare':>9} | "
        f"{'tick CPU ms':>11} {'% core @1Hz':>11}"
    )
    print(header)
    print("-" * len(header))
    for gpus in GPU_COUNTS:
        for processes in PROCESS_COUNTS:
            wall, cpu = measure(pynvml, lib, workdir, gpus, processes, args.rounds, args.gpm)
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
    print()
    print("attribution per process (µs), 256 PIDs, apart from NVML")
    print(f"{'/proc':>5} | {'cold':>7} {'cached':>7} {'previous tick':>13}")
    fake, real = measure_attribution(workdir, 256, max(5, args.rounds // 10))
    for name, costs in (("fake", fake), ("real", real)):
        print(
            f"{name:>5} | {costs['cold']:>7.2f} {costs['cached']:>7.2f} "
            f"{costs['previous tick']:>13.3f}"
        )


if __name__ == "__main__":
    main()
