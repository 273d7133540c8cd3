"""Notebook containers' ulimits against what the Docker engine can grant. Pure.

NCCL wants unlimited locked memory (``--ulimit memlock=-1``), but runc can
only raise a limit up to the hard limit the engine itself runs with, unless
it holds CAP_SYS_RESOURCE: on an engine whose hard limit is finite, asking
for more fails every start ("error setting rlimit type 8"). The spawner reads
the engine's limits once, from a tiny container that sets none
(:func:`parse_proc_limits` of its ``/proc/self/limits``; this works for a
remote engine too), and :func:`engine_ulimits` fills in ``memlock`` with the
most the engine grants when the admin did not set it, and refuses an
admin's value the engine cannot grant with a message that says what to set.
"""

from __future__ import annotations

from collections.abc import Mapping

#: ``/proc/<pid>/limits`` row -> Docker's ulimit name
PROC_NAMES = {
    "Max cpu time": "cpu",
    "Max file size": "fsize",
    "Max data size": "data",
    "Max stack size": "stack",
    "Max core file size": "core",
    "Max resident set": "rss",
    "Max processes": "nproc",
    "Max open files": "nofile",
    "Max locked memory": "memlock",
    "Max file locks": "locks",
    "Max pending signals": "sigpending",
    "Max msgqueue size": "msgqueue",
    "Max nice priority": "nice",
    "Max realtime priority": "rtprio",
    "Max realtime timeout": "rttime",
}
#: limits Docker does not set unless asked, so a probe sees what the engine itself has:
#: an admin's value above it is refused before the start (others, e.g. nofile, which
#: the engine may set by default below what it could grant, are left to Docker)
CHECKED = ("memlock", "stack")
#: Docker's "unlimited"
UNLIMITED = -1


def parse_proc_limits(text: str) -> dict[str, int]:
    """Docker ulimit name -> hard limit (-1 unlimited) from a ``/proc/<pid>/limits`` text.

    ValueError when the text has no ``Max locked memory`` row (not that file).
    """
    found = {}
    for line in text.splitlines():
        for row, name in PROC_NAMES.items():
            if line.startswith(row + " "):
                fields = line[len(row) :].split()
                if len(fields) >= 2:
                    hard = fields[1]
                    found[name] = UNLIMITED if hard == "unlimited" else int(hard)
    if "memlock" not in found:
        raise ValueError(f"not a /proc/<pid>/limits text: {text[:200]!r}")
    return found


def describe(value: int) -> str:
    if value == UNLIMITED:
        return "unlimited (-1)"
    if value >= 1024 and value % 1024 == 0:
        return f"{value} bytes ({value // 1024} KiB)"
    return str(value)


def exceeds(value: int, limit: int) -> bool:
    """Whether `value` is more than the hard limit `limit` (-1 is more than any number)."""
    if limit == UNLIMITED:
        return False
    return value == UNLIMITED or value > limit


def engine_ulimits(configured: Mapping[str, int], engine: Mapping[str, int]) -> dict[str, int]:
    """The ulimits (name -> soft = hard) a container gets: `configured`, and ``memlock``,
    when the admin left it out, at the most `engine` (:func:`parse_proc_limits`) grants.

    ValueError, saying what to set, for a configured value of :data:`CHECKED`
    above the engine's hard limit.
    """
    chosen = dict(configured)
    for name in CHECKED:
        if name in chosen and name in engine and exceeds(int(chosen[name]), engine[name]):
            raise ValueError(
                f"c.GPUDockerSpawner.ulimits[{name!r}] = {describe(int(chosen[name]))} is more "
                f"than this Docker engine grants: its hard limit is {describe(engine[name])}, "
                "so every start would fail (runc: error setting rlimit). Set it to at most "
                f"{engine[name]}, or leave {name!r} out to get the most the engine grants"
            )
    if "memlock" not in chosen and "memlock" in engine:
        chosen["memlock"] = engine["memlock"]
    return chosen
