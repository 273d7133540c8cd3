# TensorBoard and MLflow in JupyterLab's launcher, through jupyter-server-proxy.
#
# Installed as /opt/notebook/etc/jupyter/jupyter_server_config.py: the venv's
# etc/jupyter is on jupyter_server's config path, so jupyterhub-singleuser reads
# it at start. Each app starts on the first request to <server>/tensorboard/ or
# <server>/mlflow/ (the launcher tiles open those), listens on 127.0.0.1 inside
# the container only, and is reached through the single-user server, so the
# hub's login and the server's owner check apply to it like to JupyterLab itself.
#
# Where the data goes comes from the image's environment (docker/Dockerfile
# ENV), so notebooks, terminals, scripts and `docker exec` all agree with the UIs:
#   TENSORBOARD_LOGDIR   the log directory TensorBoard shows (~/tensorboard)
#   MLFLOW_TRACKING_URI  where mlflow.log_* writes (sqlite in ~/mlruns)
# An admin may point either elsewhere through the spawner's `environment`.
#
# SSH: when the spawner turned it on for this server (JUPYTER_GPU_METER_SSH=1),
# an entry "sshd" bridges the websocket <server_url>sshd/ (note the slash:
# <server_url>sshd only redirects) to OpenSSH's sshd on 127.0.0.1:{port}, run as
# this user by /usr/local/bin/jupyter-gpu-meter-sshd on the first connection.
# No launcher tile: it is for `ssh` (jupyter-gpu-meter-ssh as ProxyCommand), not a browser.
#
# To turn an app off or add one, an image built FROM this one appends to this
# file (e.g. `del c.ServerProxy.servers["mlflow"]`) or replaces it: see
# docs/how-to/images-and-templates.md, "The notebook image's tools".
import os
from urllib.parse import urlsplit

c = get_config()  # noqa: F821 (defined by the config loader)

home = os.path.expanduser("~")
tensorboard_logdir = os.environ.get("TENSORBOARD_LOGDIR") or os.path.join(home, "tensorboard")
mlruns = os.path.join(home, "mlruns")
mlflow_tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns}/mlflow.db"

# The home volume of a new user is empty: make the directories the apps and the
# defaults above write to. A home that cannot be written to must not stop the server.
for directory in (tensorboard_logdir, mlruns, os.path.join(mlruns, "artifacts")):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        print(f"jupyter_server_config: cannot create {directory}: {error}")


def mlflow_environment():
    """MLflow's server refuses state-changing API calls whose Origin is not
    localhost or listed in MLFLOW_SERVER_CORS_ALLOWED_ORIGINS (its CSRF guard;
    jupyter-server-proxy leaves XSRF to the app). The browser's Origin is the
    hub's public address: allow that one, from the hub's public_url, plus any
    origins the admin set in the spawner's environment."""
    origins = [
        origin.strip()
        for origin in os.environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", "").split(",")
        if origin.strip()
    ]
    for variable in ("JUPYTERHUB_PUBLIC_URL", "JUPYTERHUB_PUBLIC_HUB_URL", "JUPYTERHUB_HOST"):
        url = urlsplit(os.environ.get(variable, ""))
        if url.scheme and url.netloc and f"{url.scheme}://{url.netloc}" not in origins:
            origins.append(f"{url.scheme}://{url.netloc}")
    return {"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": ",".join(origins)} if origins else {}


c.ServerProxy.servers = {
    "tensorboard": {
        # --path_prefix: TensorBoard serves under the full proxied path (absolute_url)
        "command": [
            "tensorboard",
            "--logdir",
            tensorboard_logdir,
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--path_prefix",
            "{base_url}tensorboard",
        ],
        "absolute_url": True,
        # seconds until it answers: ~2 s on 2 busy cores (jupyter-server-proxy checks
        # at 0.01 s doubling, so an app ready after 41 s is seen at ~82 s)
        "timeout": 120,
        "launcher_entry": {"title": "TensorBoard", "category": "Other"},
    },
    "mlflow": {
        "command": [
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "1",
            "--backend-store-uri",
            mlflow_tracking_uri,
            # artifacts as plain files in the home, readable by notebooks that log
            # straight to the sqlite store (no mlflow-artifacts:/ URIs, which only
            # an HTTP tracking URI can resolve)
            "--no-serve-artifacts",
            "--default-artifact-root",
            os.path.join(mlruns, "artifacts"),
            "--static-prefix",
            "{base_url}mlflow",
        ],
        "absolute_url": True,
        "environment": mlflow_environment,
        # MLflow checks the Host header against localhost and private addresses;
        # the browser's is the hub's public name. Only this proxy reaches the port.
        "request_headers_override": {"Host": "127.0.0.1:{port}"},
        # ~10 s on 2 busy cores (with the image's bytecode); its first use also
        # creates the sqlite schema
        "timeout": 180,
        "launcher_entry": {"title": "MLflow", "category": "Other"},
    },
}

if os.environ.get("JUPYTER_GPU_METER_SSH") == "1":
    c.ServerProxy.servers["sshd"] = {
        "command": ["jupyter-gpu-meter-sshd", "{port}"],
        # websocket binary frames <-> the TCP stream (every other request: 405)
        "raw_socket_proxy": True,
        # the first start makes the host key: well under a second
        "timeout": 60,
        "launcher_entry": {"enabled": False},
    }
