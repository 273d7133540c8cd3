"""docker/jupyter_server_config.py, loaded as jupyter_server loads it (traitlets' loader).

The end-to-end test (test_e2e_proxy_apps.py) runs the apps; these check what
the file decides from the environment, without Docker.
"""

from pathlib import Path

import pytest
from traitlets.config.loader import PyFileConfigLoader

CONFIG = Path(__file__).parent.parent / "docker" / "jupyter_server_config.py"


@pytest.fixture
def load(monkeypatch, tmp_path):
    """Load the config file as jupyter_server would, with HOME in tmp_path and `env` set."""

    def load(home: Path | None = None, **env):
        monkeypatch.setenv("HOME", str(home or tmp_path))
        for name in (
            "TENSORBOARD_LOGDIR",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS",
            "JUPYTERHUB_PUBLIC_URL",
            "JUPYTERHUB_PUBLIC_HUB_URL",
            "JUPYTERHUB_HOST",
            "JUPYTER_GPU_METER_SSH",
        ):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return PyFileConfigLoader(CONFIG.name, str(CONFIG.parent)).load_config()

    return load


def test_the_apps_write_into_the_home_and_their_directories_exist(load, tmp_path):
    servers = load().ServerProxy.servers
    assert set(servers) == {"tensorboard", "mlflow"}
    tensorboard = servers["tensorboard"]["command"]
    assert tensorboard[tensorboard.index("--logdir") + 1] == str(tmp_path / "tensorboard")
    assert tensorboard[tensorboard.index("--path_prefix") + 1] == "{base_url}tensorboard"
    mlflow = servers["mlflow"]["command"]
    assert (
        mlflow[mlflow.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    )
    assert mlflow[mlflow.index("--default-artifact-root") + 1] == str(tmp_path / "mlruns/artifacts")
    assert mlflow[mlflow.index("--static-prefix") + 1] == "{base_url}mlflow"
    for name in servers:
        assert servers[name]["absolute_url"] is True
        assert servers[name]["command"][servers[name]["command"].index("--host") + 1] == "127.0.0.1"
    # a new user's empty home gets the directories
    assert (tmp_path / "tensorboard").is_dir() and (tmp_path / "mlruns/artifacts").is_dir()


def test_the_image_environment_decides_where_the_data_goes(load, tmp_path):
    servers = load(
        TENSORBOARD_LOGDIR=str(tmp_path / "tb-logs"),
        MLFLOW_TRACKING_URI="postgresql://mlflow@db/mlflow",
    ).ServerProxy.servers
    assert str(tmp_path / "tb-logs") in servers["tensorboard"]["command"]
    assert "postgresql://mlflow@db/mlflow" in servers["mlflow"]["command"]
    assert (tmp_path / "tb-logs").is_dir()


def test_a_home_that_cannot_be_written_does_not_stop_the_server(load, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    servers = load(home=tmp_path / "a-file" / "home").ServerProxy.servers
    assert set(servers) == {"tensorboard", "mlflow"}
    assert "cannot create" in capsys.readouterr().out


def test_mlflow_accepts_the_hubs_public_origin_and_the_admins(load, monkeypatch):
    environment = load().ServerProxy.servers["mlflow"]["environment"]
    assert environment() == {}  # nothing known: MLflow's own default (localhost only)
    assert load(
        JUPYTERHUB_PUBLIC_URL="https://hub.example.org/user/ada/",
        JUPYTERHUB_PUBLIC_HUB_URL="https://hub.example.org/hub/",
        MLFLOW_SERVER_CORS_ALLOWED_ORIGINS="https://lab.example.org, https://hub.example.org",
    ).ServerProxy.servers["mlflow"]["environment"]() == {
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": "https://lab.example.org,https://hub.example.org"
    }
    # read when the app starts, not when the config loads
    environment = load().ServerProxy.servers["mlflow"]["environment"]
    monkeypatch.setenv("JUPYTERHUB_HOST", "https://ada.hub.example.org")
    assert environment() == {"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": "https://ada.hub.example.org"}


def test_sshd_is_an_entry_only_when_the_spawner_turned_ssh_on(load):
    sshd = load(JUPYTER_GPU_METER_SSH="1").ServerProxy.servers["sshd"]
    assert sshd["command"] == ["jupyter-gpu-meter-sshd", "{port}"]
    assert sshd["raw_socket_proxy"] is True
    assert sshd["launcher_entry"] == {"enabled": False}
    for off in ({}, {"JUPYTER_GPU_METER_SSH": "0"}, {"JUPYTER_GPU_METER_SSH": "true"}):
        assert "sshd" not in load(**off).ServerProxy.servers, off
