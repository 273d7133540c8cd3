"""GPUDockerSpawner's refusals that need no Docker: its settings and the names it can meter.

The spawner is the real class, configured as jupyterhub_config.py would; only
the hub's user object is a plain stand-in (the spawner reads its name).
"""

import asyncio
from types import SimpleNamespace

import pytest
from jupyterhub import orm
from tornado import web
from traitlets.config import Config

from jupyter_gpu_meter import GPUDockerSpawner
from jupyter_gpu_meter.container import ContainerRefused


def spawner(user="ada", server="", **settings):
    return GPUDockerSpawner(
        user=SimpleNamespace(name=user, id=1, url=f"/user/{user}/", groups=[]),
        orm_spawner=orm.Spawner(name=server),  # the hub's own record, not in a database
        config=Config({"GPUDockerSpawner": settings}),
    )


@pytest.mark.parametrize("user", ["0", "00", "+0", "0:0", " 0", "root:root", ":100", ""])
def test_container_user_root_in_any_spelling_is_refused_in_config(user):
    with pytest.raises(ContainerRefused, match="as root; use a non-root numeric uid:gid"):
        spawner(container_user=user)


def test_allow_unsafe_settings_takes_only_known_names():
    assert spawner(allow_unsafe_settings={"devices"}).allow_unsafe_settings == {"devices"}
    with pytest.raises(ValueError, match=r"unknown name\(s\) 'pid'; known: .*pid_mode"):
        spawner(allow_unsafe_settings={"pid", "devices"})


def test_cap_add_all_is_refused():
    assert spawner(cap_add=["CHOWN"]).cap_add == ["CHOWN"]
    with pytest.raises(ValueError, match="'ALL' is refused; name each capability"):
        spawner(cap_add=["CHOWN", "all"])


def test_an_unsafe_create_request_is_refused_before_it_reaches_docker():
    request = {"image": "x", "host_config": {"Binds": ["/var/run/docker.sock:/run/d.sock"]}}
    with pytest.raises(ContainerRefused, match=r"\(/var/run/docker.sock\) \[docker_engine\]"):
        spawner().docker("create_container", **request)
    with pytest.raises(ContainerRefused, match=r"\[docker_engine\]"):  # another name does not do
        spawner(allow_unsafe_settings={"system_paths"}).docker("create_container", **request)


@pytest.mark.parametrize(
    "user, server, message",
    [
        (
            "a" * 256,
            "",
            "the user name 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'… cannot be metered: it has "
            "256 characters and the ledger's columns hold at most 255 (PostgreSQL refuses "
            "longer); allowed: at most 255 characters of valid Unicode, without NUL characters; "
            "ask an admin to rename the user",
        ),
        (
            "ada",
            "gpu\x00",
            "the server name 'gpu\\x00' cannot be metered: it contains a NUL character, which "
            "PostgreSQL cannot store in text; allowed: at most 255 characters of valid Unicode, "
            "without NUL characters; rename it",
        ),
        (
            "ada",
            "x\ud800",
            "the server name 'x\\ud800' cannot be metered: it is not valid Unicode (a lone "
            "surrogate), which cannot be encoded as UTF-8; allowed: at most 255 characters of "
            "valid Unicode, without NUL characters; rename it",
        ),
    ],
)
def test_names_the_ledger_cannot_store_get_a_400_before_anything_starts(user, server, message):
    refused = spawner(user, server)
    with pytest.raises(web.HTTPError) as error:
        asyncio.run(refused.start())
    assert error.value.status_code == 400
    assert error.value.jupyterhub_message == message
    message.encode("utf-8")  # the hub can send it
    assert refused.gpu_uuids == []  # nothing was allocated


def test_names_the_ledger_can_store_pass():
    spawner("😀" * 255, "a" * 255).check_names()
