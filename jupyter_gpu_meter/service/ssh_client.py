"""``GET ssh/<filename>``: the SSH client's wheel, for anyone (it holds no secret)."""

from __future__ import annotations

from tornado import web

from ..ssh_wheel import client_wheel

#: the stable name that redirects to this version's wheel
LATEST = "client.whl"


class ClientWheelHandler(web.RequestHandler):
    """The wheel ``jupyter_gpu_meter_ssh-<version>-py3-none-any.whl``; ``client.whl``
    redirects to it (302), any other name is a 404. No login: pip and CI runners fetch it."""

    def initialize(self, prefix: str):
        self.prefix = prefix

    def get(self, name: str):
        filename, data = client_wheel()
        if name == LATEST:
            return self.redirect(f"{self.prefix}ssh/{filename}")
        if name != filename:
            raise web.HTTPError(404, "the SSH client is at ssh/%s", filename)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("Cache-Control", "public, max-age=3600")
        self.write(data)
