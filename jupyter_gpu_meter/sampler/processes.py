"""One GPU's processes at one tick: NVML's process list and utilization samples, attributed.

Called by the NVML sampler for every GPU with processes or samples, so it is
written for speed: a tick at 1 Hz may hold hundreds of processes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from operator import attrgetter

from .attribution import Attribution, attribute_pid
from .readings import ProcessReading

_new = tuple.__new__  # ProcessReading without its Python-level __new__: every field given


def _sample_readers(samples) -> tuple[Callable, Callable, Callable]:
    """Readers of (pid, timeStamp, smUtil) for NVML process utilization samples.

    Through the ctypes fields themselves where the samples are structures:
    pynvml's structures wrap every attribute read in a Python method (it
    decodes bytes, which these integer fields never are), and a tick reads
    three per process. Plain objects (other bindings) are read plainly.
    """
    kind = type(samples[0])
    if issubclass(kind, ctypes.Structure):
        return kind.pid.__get__, kind.timeStamp.__get__, kind.smUtil.__get__
    return attrgetter("pid"), attrgetter("timeStamp"), attrgetter("smUtil")


def gpu_processes(
    gpu_uuid: str,
    running,
    samples,
    last_seen_us: int,
    before: dict[int, Attribution],
    now: dict[int, Attribution],
    proc_root: str = "/proc",
) -> tuple[list[ProcessReading], int]:
    """The GPU's processes, and the newest sample time now counted.

    ``running`` is ``nvmlDeviceGetComputeRunningProcesses``'s list (the same
    PID once per MIG instance: its memory is added up), ``samples``
    ``nvmlDeviceGetProcessUtilization``'s; only samples newer than
    ``last_seen_us`` count, each PID's mean SM utilization. Running processes
    come first, then those that left samples but have exited since (memory
    None). ``before`` holds the previous tick's attributions, taken as they
    are (a PID could only have been reused if its process ended and another
    GPU process got the same PID within one interval); ``now`` gathers this
    tick's; any other PID is looked up in ``proc_root``.
    """
    memory: dict[int, int | None] = {}
    for process in running:
        pid, used = process.pid, process.usedGpuMemory
        if pid in memory:
            known = memory[pid]
            used = None if known is None or used is None else known + used
        memory[pid] = used
    sm: dict[int, list[int]] = {}
    newest = last_seen_us
    if samples:
        get_pid, get_stamp, get_sm = _sample_readers(samples)
        for sample in samples:
            stamp = get_stamp(sample)
            if stamp > last_seen_us:  # never count one twice
                pid = get_pid(sample)
                if pid in sm:
                    sm[pid].append(get_sm(sample))
                else:
                    sm[pid] = [get_sm(sample)]
                if stamp > newest:
                    newest = stamp
    pids = list(memory)
    if any(pid not in memory for pid in sm):
        pids += sorted(pid for pid in sm if pid not in memory)
    found: list[ProcessReading] = []
    append, no_samples = found.append, ()
    for pid in pids:
        where = before.get(pid) or now.get(pid) or attribute_pid(pid, proc_root)
        now[pid] = where
        util = sm.get(pid, no_samples)
        if len(util) == 1:
            util = util[0]
        else:
            util = round(sum(util) / len(util)) if util else None
        append(
            _new(
                ProcessReading, (gpu_uuid, pid, where[0], memory.get(pid), util, where[1], where[2])
            )
        )
    return found, newest
