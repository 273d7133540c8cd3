"""Where code in a notebook finds the meter: ``$JUPYTER_GPU_METER_API_URL``.

A mixin of :class:`~jupyter_gpu_meter.spawner.GPUDockerSpawner`, so the
spawner (in the hub) never imports the meter service to learn its address:
``setup_meter`` and ``setup_network`` (:mod:`jupyter_gpu_meter.hubconfig`)
put it in ``c.GPUDockerSpawner.meter_api_url``.
"""

from __future__ import annotations

from traitlets import HasTraits, Unicode, validate

#: the variable every notebook container gets: the meter's base URL, as reachable from it
METER_API_URL_ENV = "JUPYTER_GPU_METER_API_URL"


class MeterURLMixin(HasTraits):
    """Puts :attr:`meter_api_url` in every container's environment."""

    meter_api_url = Unicode(
        "",
        help=f"""
        The meter's base URL as code inside a notebook container reaches it,
        ending in ``/``, e.g. ``http://172.18.0.1:10101/services/gpu-meter/``;
        every container gets it as ``${METER_API_URL_ENV}`` (JupyterLab's
        status bar reads ``api/server-status`` there with the server's own
        ``$JUPYTERHUB_API_TOKEN``). ``setup_meter`` sets it (with
        ``setup_network``: the network's gateway and the meter's port; with
        host networking: the meter's own URL). "": the variable is not set.
        """,
    ).tag(config=True)

    @validate("meter_api_url")
    def _check_meter_api_url(self, proposal):
        url = proposal.value
        if url and not (url.startswith(("http://", "https://")) and url.endswith("/")):
            raise ValueError(
                f"meter_api_url {url!r}: give an http(s) URL ending in '/', e.g. "
                "'http://172.18.0.1:10101/services/gpu-meter/'"
            )
        return url

    def get_env(self):
        env = super().get_env()
        if self.meter_api_url:
            env[METER_API_URL_ENV] = self.meter_api_url
        return env
