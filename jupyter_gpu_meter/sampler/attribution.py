"""Which Docker container a GPU process runs in: host PID -> container id, from /proc.

The NVIDIA driver reports host PIDs; ``/proc/<pid>/cgroup`` names the
container (cgroup v1, v2 with systemd or cgroupfs, nested containers). Blocking
(reads /proc): the samplers call it in their executor.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

# cgroup v1 and cgroupfs v2: ".../docker/<id>"; systemd (v1 or v2): ".../docker-<id>.scope"
_DOCKER_CGROUP = re.compile(r"/docker(?:/([0-9a-f]{64})|-([0-9a-f]{64})\.scope)(?=/|$)")


def container_from_cgroup(text: str) -> str | None:
    """The Docker container id in the text of a ``/proc/<pid>/cgroup`` file; None if none.

    The first line that names a container wins; within a line (Docker in Docker),
    the innermost container, the one the process runs in.
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _DOCKER_CGROUP.findall(path)
        if found:
            plain, scope = found[-1]
            return plain or scope
    return None


def _start_time(proc_root: str, pid: int) -> bytes | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started (clock ticks since boot)."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # fields[0] is field 3 (comm may hold spaces)
    return fields[19] if len(fields) > 19 else None


class ContainerLookup:
    """Host PID -> Docker container id, cached per process.

    A cache entry is keyed by the PID and the process's start time, so a reused
    PID never inherits the old process's container. At most ``maxsize`` entries,
    least recently used dropped first.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple[str, int, bytes], str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, pid: int, proc_root: str = "/proc") -> str | None:
        if pid <= 0:
            return None
        started = _start_time(proc_root, pid)
        if started is None:
            return None
        key = (proc_root, pid, started)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                container = container_from_cgroup(f.read())
        except OSError:
            container = None
        if _start_time(proc_root, pid) != started:
            return None  # the process ended (its PID maybe reused) while we read
        with self._lock:
            self._cache[key] = container
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return container

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


_container_lookup = ContainerLookup()


def container_of_pid(pid: int, proc_root: str = "/proc") -> str | None:
    """The Docker container id (64 hex digits) host process ``pid`` runs in.

    Reads ``<proc_root>/<pid>/cgroup`` (cgroup v1, v2 with systemd or cgroupfs,
    nested containers). None for a process outside Docker, a missing PID or an
    unreadable file. Blocking (reads /proc); cached per process.
    """
    return _container_lookup(pid, proc_root)
