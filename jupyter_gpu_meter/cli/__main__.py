"""``python -m jupyter_gpu_meter.cli``: how the hub starts the meter service."""

from . import main

main()
