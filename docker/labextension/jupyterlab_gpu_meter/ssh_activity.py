"""An open SSH session counts as activity of this notebook server.

JupyterHub culls a server by its last activity, which jupyterhub-singleuser
reports from jupyter_server's ``web_app.last_activity()``: the newest of the
kernels', terminals', API requests' and every ``*_last_activity`` setting. A
session of the image's sshd (``jupyter-gpu-meter-sshd``, issue #14) moves none
of those, so a user running ``tmux`` over SSH would be culled as idle. Every
``GPUMeterSSH.activity_interval`` seconds this looks for an authenticated SSH
session in the container and, while one is open, sets
``web_app.settings["gpu_meter_ssh_last_activity"]`` to now (UTC). Closing the
session lets normal culling resume.

An authenticated session is a process of this user whose title (sshd rewrites
its ``/proc/<pid>/cmdline``) is ``sshd: <user>@<tty or notty>`` (the session)
or ``sshd: <user> [priv]`` (its monitor). Not before login: ``sshd: <user>
[preauth]``, ``sshd: [net]``, ``sshd: … [listener] …`` do not count, so nobody
keeps a server alive by knocking at the port without a key.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from datetime import datetime, timezone

from tornado.ioloop import PeriodicCallback
from traitlets import Float, validate
from traitlets.config import Configurable

#: the key in the server's settings that jupyter_server's last_activity() reads
SETTING = "gpu_meter_ssh_last_activity"


class GPUMeterSSH(Configurable):
    """Settings of SSH activity (``c.GPUMeterSSH.…`` in the notebook server's config)."""

    activity_interval = Float(
        30.0,
        help="""
        Seconds between two looks for an open SSH session, e.g. 30. While one is
        open, the server's last activity is at most this old; jupyterhub-singleuser
        reports it to the hub every ``$JUPYTERHUB_ACTIVITY_INTERVAL`` (300 s).
        """,
    ).tag(config=True)

    @validate("activity_interval")
    def _check_interval(self, proposal):
        if not 0 < proposal.value <= 3600:
            raise ValueError(
                f"GPUMeterSSH.activity_interval {proposal.value!r}: give seconds "
                "above 0 and at most 3600, e.g. 30"
            )
        return proposal.value


def is_session_title(title: str, user: str) -> bool:
    """Whether a process title is that of an authenticated SSH session of `user`."""
    prefix = f"sshd: {user}"
    if not title.startswith(prefix):
        return False
    rest = title[len(prefix) :]
    return rest.startswith("@") or rest == " [priv]"


def process_titles(proc: str = "/proc", uid: int | None = None) -> list[str]:
    """The titles (first field of ``cmdline``) of the processes under `proc` owned
    by `uid` (default: ours). Processes that end while being read are skipped."""
    uid = os.getuid() if uid is None else uid
    titles = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        path = os.path.join(proc, entry)
        try:
            if os.stat(path).st_uid != uid:
                continue
            with open(os.path.join(path, "cmdline"), "rb") as file:
                raw = file.read(4096)
        except OSError:
            continue
        titles.append(raw.split(b"\0", 1)[0].decode(errors="replace").rstrip())
    return titles


def ssh_session_open(user: str, proc: str = "/proc", uid: int | None = None) -> bool:
    """Whether `user` has an authenticated SSH session in this (container's) process table."""
    return any(is_session_title(title, user) for title in process_titles(proc, uid))


class SSHActivity:
    """Looks for a session every `interval` seconds; `check()` is one look."""

    def __init__(
        self,
        settings: dict,
        user: str,
        interval: float,
        proc: str = "/proc",
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.settings, self.user, self.proc, self.clock = settings, user, proc, clock
        self.callback = PeriodicCallback(self.check, interval * 1000)

    def check(self) -> bool:
        """Set the activity setting to now if a session is open; whether one is."""
        if ssh_session_open(self.user, self.proc):
            self.settings[SETTING] = self.clock()
            return True
        return False

    def start(self) -> None:
        self.callback.start()

    def stop(self) -> None:
        self.callback.stop()


def setup(serverapp, *, proc: str = "/proc") -> SSHActivity:
    """Start looking for SSH sessions of the server's user; return the looker."""
    settings = GPUMeterSSH(parent=serverapp)
    activity = SSHActivity(
        serverapp.web_app.settings, getpass.getuser(), settings.activity_interval, proc
    )
    activity.start()
    serverapp.log.info(
        "jupyterlab_gpu_meter: an SSH session of %s counts as activity (looked for every %ss)",
        activity.user,
        settings.activity_interval,
    )
    return activity
