"""The SSH client as a wheel of its own, built in memory for the meter to serve.

``jupyter-gpu-meter-ssh`` (module ``jupyter_gpu_meter_ssh``, the source of
:mod:`jupyter_gpu_meter.ssh_proxy`, no dependencies) installs on a laptop or a CI
runner without the hub's dependencies: ``pip install https://HUB/services/gpu-meter/ssh/<filename>``.
The bytes are the same at every build of one version (fixed times and modes).
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path

from ._version import __version__

DISTRIBUTION = "jupyter-gpu-meter-ssh"
MODULE = "jupyter_gpu_meter_ssh"
SOURCE = Path(__file__).with_name("ssh_proxy.py")


def wheel_filename(version: str = __version__) -> str:
    """``jupyter_gpu_meter_ssh-<version>-py3-none-any.whl``."""
    return f"{MODULE}-{version}-py3-none-any.whl"


def _files(version: str, source: bytes) -> dict[str, bytes]:
    info = f"{MODULE}-{version}.dist-info"
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {DISTRIBUTION}\n"
        f"Version: {version}\n"
        "Summary: ssh ProxyCommand for GPU servers on a jupyter_gpu_meter hub\n"
        "License: BSD-3-Clause\n"
        "Requires-Python: >=3.8\n"
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: jupyter_gpu_meter.ssh_wheel\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    scripts = f"[console_scripts]\n{DISTRIBUTION} = {MODULE}:main\n"
    return {
        f"{MODULE}.py": source,
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": wheel.encode(),
        f"{info}/entry_points.txt": scripts.encode(),
    }


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def build_wheel(version: str = __version__, source: bytes | None = None) -> bytes:
    """The wheel's bytes: the module, METADATA, WHEEL, entry_points.txt and RECORD."""
    files = _files(version, SOURCE.read_bytes() if source is None else source)
    record = f"{MODULE}-{version}.dist-info/RECORD"
    files[record] = (
        "".join(_record_line(name, data) for name, data in files.items()) + f"{record},,\n"
    ).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return out.getvalue()


@lru_cache(maxsize=1)
def client_wheel() -> tuple[str, bytes]:
    """``(filename, bytes)`` of this version's client wheel (built once)."""
    return wheel_filename(), build_wheel()
