"""Where a GPU process runs: host PID -> (container id, where, name), from /proc.

The NVIDIA driver reports host PIDs. ``/proc/<pid>/stat`` gives the process's
name (field 2, the same text as ``/proc/<pid>/comm``) and its start time (field
22); ``/proc/<pid>/cgroup`` names the Docker container (cgroup v1, v2 with
systemd or cgroupfs, nested containers). Blocking (reads /proc): the samplers
call it in their executor.

What a first sight of a PID costs: three small reads (stat, cgroup, stat again
to see that the process did not end meanwhile). After that the answer is cached
per process (PID and start time), so a PID seen before costs one stat read; the
NVML sampler skips even that for PIDs it listed in the previous tick.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import NamedTuple

from .readings import WHERE_CONTAINER, WHERE_HOST, WHERE_UNKNOWN

# cgroup v1 and cgroupfs v2: ".../docker/<id>"; systemd (v1 or v2): ".../docker-<id>.scope"
_DOCKER_CGROUP = re.compile(r"/docker(?:/([0-9a-f]{64})|-([0-9a-f]{64})\.scope)(?=/|$)")


class Attribution(NamedTuple):
    """Where one process runs, as :class:`~.readings.ProcessReading` carries it."""

    #: the Docker container (64 hex digits), None if none or unknown
    container_id: str | None
    #: WHERE_CONTAINER, WHERE_HOST or WHERE_UNKNOWN
    where: str
    #: the process's name (``comm``, at most 15 characters), "" when unknown
    name: str


#: what a PID whose /proc entry cannot be read gets: it ended, or it lives in
#: another PID namespace than the one ``proc_root`` shows
UNKNOWN = Attribution(None, WHERE_UNKNOWN, "")


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


def _stat(proc_root: str, pid: int) -> tuple[bytes, str] | None:
    """(start time, name) from ``/proc/<pid>/stat``; None when it cannot be read.

    The start time is field 22 (clock ticks since boot); the name is field 2,
    in parentheses, and may itself hold spaces and parentheses.
    """
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    close = data.rfind(b")")
    fields = data[close + 2 :].split()  # fields[0] is field 3
    if close < 0 or len(fields) <= 19:
        return None
    name = data[data.find(b"(") + 1 : close].decode("utf-8", "replace").strip()
    return fields[19], name


class ContainerLookup:
    """Host PID -> where the process runs, cached per process.

    A cache entry is keyed by the PID and the process's start time, so a reused
    PID never inherits the old process's container. The name is read afresh each
    time (from the ``stat`` read anyway): an ``exec`` changes it, not the start
    time (a container's first process is ``runc:[2:INIT]`` until runc execs the
    command). At most ``maxsize`` entries,
    least recently used dropped first. Calling the lookup gives the container id
    only; :meth:`attribution` gives container, where and name. Thread-safe.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple[str, int, bytes], Attribution] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, pid: int, proc_root: str = "/proc") -> str | None:
        return self.attribution(pid, proc_root).container_id

    def attribution(self, pid: int, proc_root: str = "/proc") -> Attribution:
        """Container id, where and name of host process ``pid``; :data:`UNKNOWN` if unreadable."""
        if pid <= 0:
            return UNKNOWN
        stat = _stat(proc_root, pid)
        if stat is None:
            return UNKNOWN
        started, name = stat
        key = (proc_root, pid, started)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found if found.name == name else found._replace(name=name)
        try:
            with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                container = container_from_cgroup(f.read())
        except OSError:
            return UNKNOWN  # ended meanwhile, or the file is closed to us: say nothing
        again = _stat(proc_root, pid)
        if again is None or again[0] != started:
            return UNKNOWN  # the process ended (its PID maybe reused) while we read
        found = Attribution(container, WHERE_CONTAINER if container else WHERE_HOST, name)
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return found

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


_lookup = ContainerLookup()


def attribute_pid(pid: int, proc_root: str = "/proc") -> Attribution:
    """Where host process ``pid`` runs: its container, "container"/"host"/"unknown", its name.

    "unknown" (with no name) when ``<proc_root>/<pid>`` cannot be read: the
    process ended, or it lives in another PID namespace. Blocking (reads
    /proc); cached per process, shared with :func:`container_of_pid`.
    """
    return _lookup.attribution(pid, proc_root)


def container_of_pid(pid: int, proc_root: str = "/proc") -> str | None:
    """The Docker container id (64 hex digits) host process ``pid`` runs in.

    Reads ``<proc_root>/<pid>/cgroup`` (cgroup v1, v2 with systemd or cgroupfs,
    nested containers). None for a process outside Docker, a missing PID or an
    unreadable file. Blocking (reads /proc); cached per process.
    """
    return _lookup.attribution(pid, proc_root).container_id
