"""One default for the ledger's URL: the meter, the spawner and the CLI agree."""

from types import SimpleNamespace

import pytest
from jupyterhub import orm
from traitlets.config import Config

from jupyter_gpu_meter import GPUDockerSpawner
from jupyter_gpu_meter.cli.budget_show import BudgetShowCommand
from jupyter_gpu_meter.cli.report import ReportCommand
from jupyter_gpu_meter.ledger import DB_URL_ENV, DEFAULT_URL, default_url
from jupyter_gpu_meter.service import MeterService


def urls(config: Config) -> dict:
    spawner = GPUDockerSpawner(
        user=SimpleNamespace(name="ada", id=1, url="/user/ada/", groups=[]),
        orm_spawner=orm.Spawner(name=""),
        config=config,
    )
    return {
        "meter": MeterService(config=config).db_url,
        "spawner": spawner.ledger_url,
        "report": ReportCommand(config=config).db_url,
        "budget": BudgetShowCommand(config=config).db_url,
    }


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    return monkeypatch


def test_without_a_setting_it_is_a_sqlite_file_in_the_working_directory(no_env):
    assert default_url() == DEFAULT_URL == "sqlite:///jupyter_gpu_meter.sqlite"
    assert set(urls(Config()).values()) == {DEFAULT_URL}


def test_the_environment_names_it_for_everyone(no_env):
    no_env.setenv(DB_URL_ENV, "postgresql+psycopg://jgm@db/jgm")
    assert set(urls(Config()).values()) == {"postgresql+psycopg://jgm@db/jgm"}
    no_env.setenv(DB_URL_ENV, "")  # set but empty: as if unset
    assert default_url() == DEFAULT_URL


def test_the_meters_setting_wins_for_everyone(no_env):
    no_env.setenv(DB_URL_ENV, "sqlite:///from-env.sqlite")
    config = Config({"MeterService": {"db_url": "sqlite:////srv/hub/ledger.sqlite"}})
    assert default_url(config) == "sqlite:////srv/hub/ledger.sqlite"
    assert set(urls(config).values()) == {"sqlite:////srv/hub/ledger.sqlite"}
