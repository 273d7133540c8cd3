"""Datasets: read-only data that admins define and users choose for a server.

An admin defines each dataset once, by name, in ``c.Datasets.definitions``;
a user ticks it on the spawn form or asks for it with
``{"datasets": ["imagenet"]}``, and their server sees it read-only at
``<HomeVolumes.mount_path>/datasets/<name>`` (``~/datasets/imagenet``).

A dataset is a Docker volume, one of:

- an existing volume, by name (``{"volume": "imagenet-v2"}``): made by the
  admin with any driver, used as it is;
- a volume the hub makes on first use, with a driver and its options
  (``{"driver": "local", "driver_opts": {"type": "nfs", ...}}``), or a host
  folder (``{"path": "/srv/data/imagenet"}``, the local driver's bind), or an
  S3 bucket and prefix (``{"s3": "s3://bucket/prefix"}``) through a volume
  plugin, rclone's by default.

Parsing and validating definitions (:func:`parse_definitions`) and building
the mounts (:func:`dataset_mounts`) are pure. The Docker calls
(:func:`ensure_dataset_volume`) are blocking docker-py calls on a low-level
``APIClient``: the spawner runs them in its executor.

Volumes the hub makes carry the labels ``jupyter-gpu-meter.volume =
"dataset"`` and ``jupyter-gpu-meter.dataset = <name>``: the storage meter
bills only homes and snapshots, and a dataset can never name a home or
snapshot volume (:class:`DatasetError` when one would be mounted).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import docker.errors
from traitlets import Dict, validate
from traitlets.config import LoggingConfigurable

from . import labels
from .container import UNSAFE_SETTINGS, ContainerRefused, host_path_problems
from .homes import HOME, SNAPSHOT, VOLUME_KIND, inspect_volume

#: the value of the volume-kind label on volumes the hub makes for datasets
DATASET = "dataset"
#: on a dataset volume the hub made: the dataset's name
DATASET_NAME = labels.PREFIX + "dataset"
#: the folder under the notebook user's home where datasets are mounted
FOLDER = "datasets"
#: the name of a volume the hub makes for a dataset, unless the definition names one
VOLUME_TEMPLATE = "jupyter-gpu-meter-dataset-{name}"
#: the volume plugin an "s3" dataset uses unless the definition names another driver
S3_DRIVER = "rclone"

#: keys a dataset definition may have
DEFINITION_KEYS = ("description", "volume", "path", "driver", "driver_opts", "s3")
#: what a dataset name may be: it becomes a folder name, ~/datasets/<name>
NAME_RULE = (
    "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, "
    "e.g. 'imagenet' or 'coco-2017'"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: what Docker accepts as a volume name (homes.py's rule), and our longest
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
#: a driver or plugin name, e.g. "local", "rclone", "rclone/docker-volume-rclone:amd64"
_DRIVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:-]{0,127}")
#: an S3 bucket name (AWS's rules for new buckets, without the address-like exceptions)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_EXAMPLES = """; for example
  c.Datasets.definitions = {
      "demo": {"path": "/srv/datasets/demo", "description": "A local folder"},
      "imagenet": {"driver": "local", "driver_opts": {"type": "nfs",
                   "o": "addr=10.0.0.5,ro,nfsvers=4", "device": ":/export/imagenet"}},
      "coco": {"s3": "s3://my-bucket/coco/", "driver_opts": {"s3-provider": "AWS",
               "s3-env-auth": "true"}},
      "mnist": {"volume": "an-existing-docker-volume"},
  }"""


class DatasetError(RuntimeError):
    """A dataset that cannot be mounted; the message says why and what to do."""


@dataclass(frozen=True)
class Dataset:
    """One dataset, as defined by an admin and validated."""

    name: str
    #: shown on the spawn form next to the name
    description: str
    #: the Docker volume mounted
    volume: str
    #: True: the hub makes the volume (with driver and driver_opts) on first use
    create: bool
    driver: str | None = None
    driver_opts: Mapping[str, str] = field(default_factory=dict)

    @property
    def volume_labels(self) -> dict[str, str]:
        """The labels of the volume the hub makes for this dataset."""
        return {VOLUME_KIND: DATASET, DATASET_NAME: self.name}


# --- parsing and validation (pure) ----------------------------------------------


def _fail(name, problem: str):
    raise ValueError(f"c.Datasets.definitions[{name!r}]: {problem}")


def check_name(name) -> str:
    """The dataset name unchanged, or ValueError saying what a name may be."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"c.Datasets.definitions: dataset name {name!r} is not allowed: it becomes the "
            f"folder ~/{FOLDER}/<name>; use {NAME_RULE}"
        )
    return name


def _check_host_path(name: str, path, what: str) -> str:
    """An absolute, clean host folder a notebook may see, or ValueError."""
    if not isinstance(path, str) or not path.strip().startswith("/"):
        _fail(name, f"{what} {path!r} must be an absolute host folder, e.g. '/srv/datasets/{name}'")
    cleaned = posixpath.normpath(path.strip())
    cleaned = "/" + cleaned.lstrip("/")
    problems = host_path_problems(cleaned)
    if problems:
        _fail(
            name,
            f"{what} {path!r} would give notebooks "
            f"{' and '.join(UNSAFE_SETTINGS[problem] for problem in problems)}; "
            "give a folder that holds only the data, e.g. '/srv/datasets/" + name + "'",
        )
    return cleaned


def _check_driver_opts(name: str, options) -> dict[str, str]:
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(
        isinstance(key, str) and key and isinstance(value, str) for key, value in options.items()
    ):
        _fail(
            name,
            f"'driver_opts' {options!r} must map option names to strings, "
            "e.g. {'type': 'nfs', 'o': 'addr=10.0.0.5,ro', 'device': ':/export/data'}",
        )
    return dict(options)


def _check_local_opts(name: str, options: dict[str, str]) -> dict[str, str]:
    """The local driver's options: a device, and a host folder only where notebooks may see it."""
    if not options.get("device"):
        _fail(
            name,
            "the local driver needs 'driver_opts' with a 'device' (an NFS export such as "
            "':/export/data' with 'type': 'nfs', or a host folder with 'type': 'none', "
            "'o': 'bind'); without one Docker makes an empty volume. For a host folder, "
            "'path' is shorter",
        )
    bind = options.get("type", "") == "none" or "bind" in [
        part.strip() for part in options.get("o", "").split(",")
    ]
    device = options["device"]
    if bind or device.startswith("/"):
        options["device"] = _check_host_path(name, device, "'device'")
    return options


def _check_s3(name: str, location) -> str:
    """``s3://bucket/prefix`` (or ``bucket/prefix``) as rclone's ``bucket/prefix`` path."""
    text = location.strip() if isinstance(location, str) else ""
    if text.startswith("s3://"):
        text = text[len("s3://") :]
    bucket, _, prefix = text.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        _fail(
            name,
            f"'s3' {location!r}: give 's3://<bucket>/<prefix>' with a bucket name of 3 to 63 "
            "lower-case letters, digits, '.' and '-', e.g. 's3://my-datasets/imagenet/'",
        )
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        _fail(name, f"'s3' {location!r}: the prefix may not hold empty, '.' or '..' parts")
    return f"{bucket}/{prefix}" if prefix else bucket


def parse_definition(name, definition) -> Dataset:
    """One definition as a :class:`Dataset`, or ValueError saying what is allowed."""
    check_name(name)
    if not isinstance(definition, Mapping):
        _fail(name, f"expected a dict with one of 'volume', 'path', 'driver' or 's3'{_EXAMPLES}")
    unknown = sorted(str(key) for key in set(definition) - set(DEFINITION_KEYS))
    if unknown:
        _fail(
            name,
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(DEFINITION_KEYS)}",
        )
    description = definition.get("description", "")
    if not isinstance(description, str):
        _fail(name, f"'description' must be text, got {description!r}")

    sources = [key for key in ("path", "driver", "s3") if key in definition]
    if sources == ["driver", "s3"]:
        sources = ["s3"]  # an S3 dataset through another plugin than rclone
    if len(sources) > 1:
        _fail(
            name,
            f"give one of 'path', 'driver' or 's3', not {' and '.join(map(repr, sources))}",
        )
    volume = definition.get("volume")
    if volume is not None and (not isinstance(volume, str) or not _VOLUME_NAME.fullmatch(volume)):
        _fail(
            name,
            f"'volume' {volume!r} is not a Docker volume name: 1 to 200 letters, digits, "
            "'_', '.' and '-', starting with a letter or digit",
        )
    if not sources:
        if volume is None:
            _fail(name, f"missing: one of 'volume', 'path', 'driver' or 's3'{_EXAMPLES}")
        if "driver_opts" in definition:
            _fail(
                name,
                "'driver_opts' needs a 'driver' (or 'path', 's3'): an existing volume "
                "keeps the options it was made with",
            )
        return Dataset(name, description, volume, create=False)

    volume = volume or VOLUME_TEMPLATE.format(name=name)
    options = _check_driver_opts(name, definition.get("driver_opts"))
    source = sources[0]
    if source == "path":
        if options:
            _fail(name, "'path' takes no 'driver_opts': it is the local driver's bind of a folder")
        device = _check_host_path(name, definition["path"], "'path'")
        return Dataset(
            name,
            description,
            volume,
            create=True,
            driver="local",
            driver_opts={"type": "none", "o": "bind", "device": device},
        )
    driver = definition.get("driver", S3_DRIVER)
    if not isinstance(driver, str) or not _DRIVER.fullmatch(driver):
        _fail(
            name,
            f"'driver' {driver!r} is not a volume driver name, e.g. 'local' or 'rclone' "
            "(a plugin's name or alias)",
        )
    if source == "s3":
        # rclone: an on-the-fly S3 remote, mounted read-only, readable by the notebook user
        options = {
            "type": "s3",
            "path": _check_s3(name, definition["s3"]),
            "read-only": "true",
            "allow-other": "true",
            **options,
        }
    elif driver == "local":
        options = _check_local_opts(name, options)
    else:
        device = options.get("device", "")
        if device.startswith("/"):
            options["device"] = _check_host_path(name, device, "'device'")
    return Dataset(name, description, volume, create=True, driver=driver, driver_opts=options)


def parse_definitions(definitions) -> tuple[Dataset, ...]:
    """Every definition as a :class:`Dataset`, in the config's order; ValueError names the first
    bad one and says what is allowed."""
    if not isinstance(definitions, Mapping):
        raise ValueError(
            f"c.Datasets.definitions must be a dict of dataset name -> definition{_EXAMPLES}"
        )
    datasets = tuple(parse_definition(name, definition) for name, definition in definitions.items())
    by_volume: dict[str, str] = {}
    for dataset in datasets:
        other = by_volume.setdefault(dataset.volume, dataset.name)
        if other != dataset.name:
            raise ValueError(
                f"c.Datasets.definitions: {other!r} and {dataset.name!r} both use the Docker "
                f"volume {dataset.volume!r}; give each dataset its own 'volume'"
            )
    return datasets


def dataset_mounts(datasets: Sequence[Dataset], home: str) -> tuple[list[dict], dict[str, str]]:
    """The Docker API ``Mounts`` and ``Tmpfs`` that show `datasets` under ``<home>/datasets``.

    Each dataset is mounted read-only at ``<home>/datasets/<name>``, without
    copying the image's files into it. ``<home>/datasets`` itself is a small
    root-owned tmpfs: the mount points Docker makes for the datasets live
    there, not in the user's persistent home (where they would stay behind as
    empty root-owned folders the user cannot remove). None: nothing.
    """
    if not datasets:
        return [], {}
    folder = posixpath.join(home, FOLDER)
    mounts = [
        {
            "Type": "volume",
            "Source": dataset.volume,
            "Target": posixpath.join(folder, dataset.name),
            "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True},
        }
        for dataset in datasets
    ]
    return mounts, {folder: "mode=0755,size=64k"}


def add_dataset_mounts(host_config: Mapping, datasets: Sequence[Dataset], home: str) -> dict:
    """A copy of a Docker API host config with `datasets` mounted (:func:`dataset_mounts`).

    :class:`~jupyter_gpu_meter.container.ContainerRefused` if the admin's
    settings already mount something at ``<home>/datasets`` or below it.
    """
    host = dict(host_config)
    mounts, tmpfs = dataset_mounts(datasets, home)
    if not mounts:
        return host
    folder = posixpath.join(home, FOLDER)
    taken = [
        str(bind).split(":")[1] for bind in host.get("Binds") or [] if str(bind).count(":") >= 1
    ]
    taken += [str(mount.get("Target", "")) for mount in host.get("Mounts") or []]
    taken += list(host.get("Tmpfs") or {})
    clash = [
        target
        for target in taken
        if posixpath.normpath(target) == folder
        or posixpath.normpath(target).startswith(folder + "/")
    ]
    if clash:
        raise ContainerRefused(
            f"the configuration mounts something at {clash[0]}, where datasets go "
            f"({folder}/<name>): mount it elsewhere"
        )
    host["Mounts"] = [*(host.get("Mounts") or []), *mounts]
    host["Tmpfs"] = {**(host.get("Tmpfs") or {}), **tmpfs}
    return host


# --- Docker (blocking) -------------------------------------------------------------


def _same_driver(found: str, wanted: str) -> bool:
    """Docker names a plugin's driver with or without its ":latest" tag."""
    return found.removesuffix(":latest") == wanted.removesuffix(":latest")


def check_not_private(dataset: Dataset, info: Mapping) -> None:
    """:class:`DatasetError` if the volume `info` is a user's home or snapshot."""
    found = info.get("Labels") or {}
    kind = found.get(VOLUME_KIND)
    if kind in (HOME, SNAPSHOT):
        raise DatasetError(
            f"dataset {dataset.name!r}: the volume {dataset.volume} is the {kind} of user "
            f"{found.get(labels.USER, '?')!r}; a dataset can never be a user's home or snapshot: "
            "fix c.Datasets.definitions"
        )


def check_volume_source(dataset: Dataset, info: Mapping) -> None:
    """:class:`DatasetError` if an existing volume binds a host folder notebooks may not see."""
    options = info.get("Options") or {}
    device = str(options.get("device") or "")
    if device.startswith("/"):
        problems = host_path_problems(device)
        if problems:
            raise DatasetError(
                f"dataset {dataset.name!r}: the volume {dataset.volume} binds {device}, which "
                f"would give notebooks "
                f"{' and '.join(UNSAFE_SETTINGS[problem] for problem in problems)}; "
                "use a volume of a folder that holds only the data"
            )


def ensure_dataset_volume(api, dataset: Dataset) -> Mapping:
    """The dataset's volume as Docker inspects it, made on first use; :class:`DatasetError`
    if it cannot be mounted as this dataset.

    An existing volume (``create`` False) must exist: Docker would otherwise
    make an empty one. A volume the hub makes is made once, with the
    dataset's labels, driver and options; one of that name made otherwise
    (other options, or not by the hub) is refused with a message that says
    how to resolve it. Neither may be a home or snapshot volume.
    """
    info = inspect_volume(api, dataset.volume)
    if not dataset.create:
        if info is None:
            raise DatasetError(
                f"dataset {dataset.name!r}: the Docker volume {dataset.volume} does not exist; "
                "create it (docker volume create ...) or fix c.Datasets.definitions"
            )
        check_not_private(dataset, info)
        check_volume_source(dataset, info)
        return info
    if info is None:
        try:
            api.create_volume(
                name=dataset.volume,
                driver=dataset.driver,
                driver_opts=dict(dataset.driver_opts),
                labels=dataset.volume_labels,
            )
        except docker.errors.APIError as e:
            raise DatasetError(
                f"dataset {dataset.name!r}: Docker could not make the volume {dataset.volume} "
                f"with the driver {dataset.driver!r}: {e.explanation or e}"
            ) from None
        # two starts may make it at once: Docker answers both with the one volume
        info = api.inspect_volume(dataset.volume)
    check_not_private(dataset, info)
    found = info.get("Labels") or {}
    if found.get(VOLUME_KIND) != DATASET or found.get(DATASET_NAME) != dataset.name:
        raise DatasetError(
            f"dataset {dataset.name!r}: a Docker volume named {dataset.volume} exists but was "
            f"not made by the hub for this dataset; remove it (docker volume rm "
            f"{dataset.volume}) or give the dataset another 'volume' in c.Datasets.definitions"
        )
    options = dict(info.get("Options") or {})
    if not _same_driver(str(info.get("Driver") or ""), dataset.driver or "") or options != dict(
        dataset.driver_opts
    ):
        raise DatasetError(
            f"dataset {dataset.name!r}: the volume {dataset.volume} was made with the driver "
            f"{info.get('Driver')!r} and options {options}, not as c.Datasets.definitions "
            f"now says ({dataset.driver!r}, {dict(dataset.driver_opts)}); a volume's options "
            f"cannot change: remove it once no server uses it (docker volume rm "
            f"{dataset.volume}) and the next start makes it anew"
        )
    return info


class Datasets(LoggingConfigurable):
    """Datasets that users may mount read-only in their servers (``c.Datasets``)."""

    definitions = Dict(
        help="""
        Dataset name -> definition. Users choose datasets by name on the spawn
        form or with ``{"datasets": ["<name>", ...]}``; each is mounted
        read-only at ``<c.HomeVolumes.mount_path>/datasets/<name>``. A name is
        1 to 63 letters, digits, ``.``, ``_`` or ``-``. A definition is a dict
        with an optional ``description`` (shown on the spawn form) and one of:

        - ``volume``: an existing Docker volume's name, used as it is;
        - ``path``: a host folder (absolute), e.g. ``"/srv/datasets/demo"``;
        - ``driver`` and ``driver_opts``: a volume the hub makes with that
          driver, e.g. ``{"driver": "local", "driver_opts": {"type": "nfs",
          "o": "addr=10.0.0.5,ro", "device": ":/export/imagenet"}}``;
        - ``s3``: ``"s3://<bucket>/<prefix>"`` through a volume plugin
          (``driver``, default ``"rclone"``), its options in ``driver_opts``.

        With ``path``, ``driver`` or ``s3``, ``volume`` names the volume the
        hub makes (default ``jupyter-gpu-meter-dataset-<name>``). Host folders
        under ``/``, ``/dev``, ``/proc``, ``/sys`` or the Docker engine's data
        and socket are refused.
        """,
    ).tag(config=True)

    @validate("definitions")
    def _check_definitions(self, proposal):
        parse_definitions(proposal.value)
        return proposal.value

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        """The definitions, validated, in the config's order."""
        return parse_definitions(self.definitions)

    def by_name(self) -> dict[str, Dataset]:
        return {dataset.name: dataset for dataset in self.datasets}
