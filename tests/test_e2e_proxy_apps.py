"""TensorBoard and MLflow in the notebook image, through the hub's proxy, end to end.

A real hub starts ada's server from the image built by scripts/build-images;
both apps start on the first request to their path (jupyter-server-proxy,
docker/jupyter_server_config.py) and answer through the hub's proxy with
ada's token only. What ada logs inside the container with the image's
defaults (MLFLOW_TRACKING_URI, TENSORBOARD_LOGDIR) is what the UIs show, and
it is still there after the server was stopped and started again.
"""

import json
import time

import pytest
import requests

from tests.metering import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

PUBLIC_ORIGIN = "https://hub.example.org"

LOG_TENSORBOARD_RUN = """
import os
from tensorboard.summary import Writer
writer = Writer(os.path.join(os.environ["TENSORBOARD_LOGDIR"], "first-run"))
for step, loss in enumerate([1.0, 0.5, 0.25]):  # exact in float32
    writer.add_scalar("loss", loss, step=step)
writer.close()
"""

LOG_MLFLOW_RUN = """
import mlflow
mlflow.set_experiment("proxy-test")
with mlflow.start_run(run_name="first") as run:
    mlflow.log_param("lr", "0.01")
    mlflow.log_metric("loss", 0.25, step=3)
print("run_id=" + run.info.run_id)
"""


def as_user(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = "token " + token
    return session


def exec_python(container, script: str) -> str:
    """Run `script` with the image's python as the notebook user, with the image's env."""
    result = container.exec_run(["python", "-c", script])
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return result.output.decode()


def first_answer(session: requests.Session, url: str) -> tuple[requests.Response, float]:
    """GET `url` (the app starts on it); the answer and the seconds it took."""
    started = time.perf_counter()
    response = session.get(url, timeout=240)
    return response, time.perf_counter() - started


def search_runs(session: requests.Session, mlflow_url: str, experiment_id: str) -> list[dict]:
    response = session.post(
        mlflow_url + "api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id]},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json().get("runs", [])


def test_tensorboard_and_mlflow_answer_their_owner_through_the_hub_and_refuse_others(
    make_hub, capsys
):
    # one simulated GPU (ada starts CPU-only); the admin allows the hub's public origin
    hub = make_hub(
        "1",
        **{"GPUDockerSpawner.environment": {"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": PUBLIC_ORIGIN}},
    )
    ada, bob = as_user(hub.user_token("ada")), as_user(hub.user_token("bob"))
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    container = hub.container_of("ada")
    tensorboard_url = f"{hub.url}/user/ada/tensorboard/"
    mlflow_url = f"{hub.url}/user/ada/mlflow/"
    seconds = {}

    # JupyterLab's launcher lists both (jupyter-server-proxy's labextension reads this);
    # the server's sshd (SSH is on by default) is proxied too but is no launcher tile
    info = ada.get(f"{hub.url}/user/ada/server-proxy/servers-info", timeout=30)
    assert info.status_code == 200, info.text
    apps = {app["name"]: app["launcher_entry"] for app in info.json()["server_processes"]}
    assert {name: entry["enabled"] for name, entry in apps.items()} == {
        "tensorboard": True,
        "mlflow": True,
        "sshd": False,
    }
    assert (apps["tensorboard"]["title"], apps["mlflow"]["title"]) == ("TensorBoard", "MLflow")

    # what ada writes with the image's defaults, before either app runs
    exec_python(container, LOG_TENSORBOARD_RUN)
    output = exec_python(container, LOG_MLFLOW_RUN)
    (run_id,) = [line[7:] for line in output.splitlines() if line.startswith("run_id=")]

    # TensorBoard: its page and its data API, behind the path prefix
    page, seconds["tensorboard first start"] = first_answer(ada, tensorboard_url)
    assert page.status_code == 200, page.text[:500]
    assert "<tf-tensorboard" in page.text or "TensorBoard" in page.text
    environment = ada.get(tensorboard_url + "data/environment", timeout=30)
    assert environment.status_code == 200, environment.text
    assert environment.json()["data_location"] == "/home/jovyan/tensorboard"
    wait_until(
        lambda: "first-run" in ada.get(tensorboard_url + "data/runs", timeout=30).json(),
        30,
        "TensorBoard to load the run written in the container",
    )
    scalars = ada.get(
        tensorboard_url + "data/plugin/scalars/scalars",
        params={"run": "first-run", "tag": "loss"},
        timeout=30,
    )
    assert scalars.status_code == 200, scalars.text
    assert [(step, value) for _, step, value in scalars.json()] == [(0, 1.0), (1, 0.5), (2, 0.25)]

    # MLflow: its page, and the run logged in the container through its REST API
    page, seconds["mlflow first start"] = first_answer(ada, mlflow_url)
    assert page.status_code == 200, page.text[:500]
    assert "MLflow" in page.text
    experiment = ada.get(
        mlflow_url + "api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "proxy-test"},
        timeout=30,
    )
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment"]["experiment_id"]
    (run,) = search_runs(ada, mlflow_url, experiment_id)
    assert run["info"]["run_id"] == run_id
    (metric,) = run["data"]["metrics"]
    assert (metric["key"], metric["value"], metric["step"]) == ("loss", 0.25, 3)

    # MLflow keeps its CSRF guard: another site's page cannot change ada's runs
    # through her browser (jupyter-server-proxy leaves XSRF to the app)
    forged = ada.post(
        mlflow_url + "api/2.0/mlflow/experiments/create",
        json={"name": "forged"},
        headers={"Origin": "https://evil.example"},
        timeout=30,
    )
    assert forged.status_code == 403, forged.text
    for origin in (hub.url, PUBLIC_ORIGIN):  # the UI on localhost, or on the hub's name
        from_the_ui = ada.post(
            mlflow_url + "api/2.0/mlflow/experiments/create",
            json={"name": f"from-the-ui-at-{origin}"},
            headers={"Origin": origin},
            timeout=30,
        )
        assert from_the_ui.status_code == 200, from_the_ui.text

    # bob's token opens neither app of ada's; no credentials → the hub's login
    for url in (tensorboard_url, mlflow_url, mlflow_url + "api/2.0/mlflow/experiments/search"):
        refused = bob.get(url, timeout=30, allow_redirects=False)
        assert refused.status_code == 403, (url, refused.status_code, refused.text[:300])
        anonymous = requests.get(url, timeout=30, allow_redirects=False)
        assert anonymous.status_code == 302, (url, anonymous.status_code)
        assert "/hub/" in anonymous.headers["Location"], anonymous.headers["Location"]

    # the runs live in ada's home volume: a new server (new container) shows them
    hub.stop_server("ada")
    assert hub.start_server("ada", {"gpus": 0}).status_code in (201, 202)
    page, seconds["mlflow start in a new server"] = first_answer(ada, mlflow_url)
    assert page.status_code == 200, page.text[:500]
    (run,) = search_runs(ada, mlflow_url, experiment_id)
    assert run["info"]["run_id"] == run_id
    page, seconds["tensorboard start in a new server"] = first_answer(ada, tensorboard_url)
    assert page.status_code == 200
    wait_until(
        lambda: "first-run" in ada.get(tensorboard_url + "data/runs", timeout=30).json(),
        30,
        "TensorBoard to show the run after the restart",
    )
    with capsys.disabled():
        print("\nproxy apps, seconds to first answer:", json.dumps(seconds))
