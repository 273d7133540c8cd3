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


_readers: dict[type, tuple[Callable, Callable, Callable]] = {}


def _sample_readers(samples) -> tuple[Callable, Callable, Callable]:
    """Readers of (pid, timeStamp, smUtil) for NVML process utilization samples.

    Through the ctypes fields themselves where the samples are structures:
    pynvml's structures wrap every attribute read in a Python method (it
    decodes bytes, which these integer fields never are), and a tick reads
    three per process. Plain objects (other bindings) are read plainly.
    """
    kind = type(samples[0])
    readers = _readers.get(kind)
    if readers is None:
        if issubclass(kind, ctypes.Structure):
            readers = kind.pid.__get__, kind.timeStamp.__get__, kind.smUtil.__get__
        else:
            readers = attrgetter("pid"), attrgetter("timeStamp"), attrgetter("smUtil")
        _readers[kind] = readers
    return readers


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
    sm: dict[int, int] = {}  # each PID's one sample's SM utilization, or its mean
    newest = last_seen_us
    if samples:
        several: dict[int, list[int]] | None = None  # PIDs with more than one new sample
        get_pid, get_stamp, get_sm = _sample_readers(samples)
        for sample in samples:
            stamp = get_stamp(sample)
            if stamp > last_seen_us:  # never count one twice
                pid = get_pid(sample)
                if pid in sm:
                    several = several or {}
                    several.setdefault(pid, [sm[pid]]).append(get_sm(sample))
                else:
                    sm[pid] = get_sm(sample)
                if stamp > newest:
                    newest = stamp
        for pid, values in (several or {}).items():
            sm[pid] = round(sum(values) / len(values))
    found: list[ProcessReading] = []
    append = found.append
    for pid, used in memory.items():
        where = before.get(pid) or now.get(pid) or attribute_pid(pid, proc_root)
        now[pid] = where
        container, place, name = where
        append(_new(ProcessReading, (gpu_uuid, pid, container, used, sm.get(pid), place, name)))
    if sm.keys() <= memory.keys():
        return found, newest
    for pid in sorted(sm.keys() - memory.keys()):
        where = before.get(pid) or now.get(pid) or attribute_pid(pid, proc_root)
        now[pid] = where
        container, place, name = where
        append(_new(ProcessReading, (gpu_uuid, pid, container, None, sm[pid], place, name)))
    return found, newest
