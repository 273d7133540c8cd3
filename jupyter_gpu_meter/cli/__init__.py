"""``jupyter-gpu-meter``: the meter service, and commands on its ledger and homes.

jupyter-gpu-meter [--config jupyterhub_config.py]      run the service
jupyter-gpu-meter report [--user U] [--since DATE] [--until DATE] [--format table|csv|json]
jupyter-gpu-meter upgrade-db [--db-url URL]
jupyter-gpu-meter budget set|grant|remove|show|history ...
jupyter-gpu-meter homes list|remove ...
jupyter-gpu-meter snapshots list|take|restore|delete ...
jupyter-gpu-meter node-config [--node NAME] [--format text|json]

:class:`~jupyter_gpu_meter.service.app.MeterService` declares the
subcommands by the import names of their classes (one module each here:
:mod:`.report`, :mod:`.db`, :mod:`.budget`, :mod:`.homes`, :mod:`.node_config`), so a command's
module is imported only when that command runs.
"""

from __future__ import annotations

from ..service.app import MeterService


def main(argv=None):
    """The console script ``jupyter-gpu-meter``."""
    MeterService.launch_instance(argv)
