"""The SSH client (ssh_proxy) against real websocket servers in the test.

The client runs as ssh runs it: a subprocess of ``python -S -I ssh_proxy.py``
(no site-packages: the module is standard library only) with ssh's bytes on
its stdin and stdout. The servers are tornado's websocket implementation
(echo, a relay to a real TCP socket like jupyter-server-proxy's, TLS with a
self-signed certificate), tornado handlers that refuse the handshake, and a
scripted raw server for what tornado never sends (fragments, pings).
"""

import asyncio
import base64
import configparser
import hashlib
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tornado import web, websocket
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.testing import bind_unused_port

from jupyter_gpu_meter import ssh_proxy
from jupyter_gpu_meter.ssh_proxy import config_snippet

PROXY = Path(ssh_proxy.__file__)
TOKEN = "ada-token-0123456789"


class Authorized:
    """Refuse the upgrade (403) without ada's token, as the single-user server does."""

    def prepare(self):
        if self.request.headers.get("Authorization") != f"token {TOKEN}":
            raise web.HTTPError(403)


class EchoHandler(Authorized, websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=True)


class RelayHandler(Authorized, websocket.WebSocketHandler):
    """Websocket <-> TCP, as jupyter-server-proxy's raw socket proxy does."""

    async def open(self):
        self.stream = await TCPClient().connect("127.0.0.1", self.settings["tcp_port"])
        asyncio.ensure_future(self.pipe())

    async def pipe(self):
        try:
            while True:
                self.write_message(await self.stream.read_bytes(65536, partial=True), True)
        except StreamClosedError:
            self.close()

    def on_message(self, message):
        self.stream.write(message)

    def on_close(self):
        self.stream.close()


class StatusHandler(web.RequestHandler):
    def get(self, status):
        if status == "302":
            return self.redirect("/hub/login?next=/user/ada/sshd/")
        if status == "301":  # jupyter_server without an sshd route strips the slash
            return self.redirect(f"/user/{status}/sshd", status=301)
        if status == "303":  # the proxy sends a stopped server's URLs to the hub
            return self.redirect(f"/hub/user/{status}/sshd/", status=303)
        raise web.HTTPError(int(status))


async def digest_server(reader, writer):
    """Read a 4-byte length and that many bytes, answer their sha256, hang up."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    data = await reader.readexactly(size)
    writer.write(hashlib.sha256(data).hexdigest().encode())
    await writer.drain()
    writer.close()


@pytest.fixture
async def hub(tmp_path):
    """A websocket server on a free port; ``.url`` is ada's server URL."""
    tcp = await asyncio.start_server(digest_server, "127.0.0.1", 0)
    application = web.Application(
        [
            (r"/user/ada/sshd/", EchoHandler),
            (r"/user/ada/gpu1/sshd/", RelayHandler),
            (r"/user/(\d+)/sshd/", StatusHandler),
        ],
        tcp_port=tcp.sockets[0].getsockname()[1],
        websocket_max_message_size=1 << 30,
    )
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    yield type("Hub", (), {"url": f"http://127.0.0.1:{port}/user/ada/", "port": port})
    server.stop()
    tcp.close()


async def run(url, data=b"", *args, env=None, home=None, timeout=60):
    """Run the client as ssh does; (exit status, stdout, stderr)."""
    env = {"JUPYTERHUB_API_TOKEN": TOKEN} if env is None else env
    env = {"PATH": os.environ["PATH"], "HOME": str(home or "/nonexistent"), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-I", str(PROXY), *args, url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    return proc.returncode, out, err.decode()


@pytest.mark.parametrize("size", [0, 1, 65537])
async def test_bytes_come_back_as_they_went(hub, size):
    data = os.urandom(size)
    status, out, err = await run(hub.url, data)
    assert (status, err) == (0, "")
    assert out == data


async def test_a_keystroke_comes_back_at_once(hub, capsys):
    """Interactive ssh: one byte is sent and answered without waiting for more."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-I", str(PROXY), hub.url,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"JUPYTERHUB_API_TOKEN": TOKEN},
    )  # fmt: skip
    proc.stdin.write(b"a")  # the handshake first, then this
    assert await asyncio.wait_for(proc.stdout.readexactly(1), 30) == b"a"
    rounds = []
    for key in b"keystrokes":
        start = time.perf_counter()
        proc.stdin.write(bytes([key]))
        assert await asyncio.wait_for(proc.stdout.readexactly(1), 5) == bytes([key])
        rounds.append(time.perf_counter() - start)
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    with capsys.disabled():
        print(f"\none keystroke there and back: {sorted(rounds)[5] * 1000:.2f} ms (median)")


def test_the_console_script_is_declared():
    setup = configparser.ConfigParser()
    setup.read(PROXY.parent.parent / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "jupyter-gpu-meter-ssh = jupyter_gpu_meter.ssh_proxy:main" in scripts


async def test_ten_megabytes_and_the_throughput(hub, capsys):
    data = os.urandom(10 << 20)
    start = time.perf_counter()
    status, out, err = await run(hub.url, data)
    seconds = time.perf_counter() - start
    assert (status, err) == (0, "")
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    with capsys.disabled():
        print(f"\n10 MiB through a local websocket echo: {10 / seconds:.1f} MiB/s each way")
    assert 10 / seconds > 2  # a per-byte Python loop would not reach this


async def test_relay_to_tcp_and_the_server_closing_ends_it(hub):
    """Through a relay to a real socket: the far end hangs up, the client exits 0;
    the token is in the environment, never on the command line."""
    data = os.urandom(3 << 20)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-S", "-I", str(PROXY), hub.url + "gpu1/",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"JUPYTERHUB_API_TOKEN": TOKEN},
    )  # fmt: skip
    assert TOKEN not in command_line(proc.pid)
    proc.stdin.write(len(data).to_bytes(4, "big") + data)  # stdin stays open
    out = await asyncio.wait_for(proc.stdout.read(), 30)
    assert out == hashlib.sha256(data).hexdigest().encode()
    assert await asyncio.wait_for(proc.wait(), 30) == 0


def command_line(pid) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text()


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1: (cert, key) paths."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_a_private_ca(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sock, port = bind_unused_port()
    server = HTTPServer(web.Application([(r"/user/ada/sshd/", EchoHandler)]), ssl_options=context)
    server.add_sockets([sock])
    url = f"https://127.0.0.1:{port}/user/ada/"
    try:
        data = os.urandom(2 << 20)
        status, out, err = await run(url, data, "--cafile", str(cert))
        assert (status, err, out == data) == (0, "", True)
        status, out, err = await run(url, b"x")
        assert status == 255
        assert "TLS certificate of 127.0.0.1:" in err and "--cafile" in err
    finally:
        server.stop()


REFUSALS = {
    "401": "did not accept the token",
    "302": "did not accept the token",
    "301": "no SSH at",
    "303": "is not running",
    "403": "may not reach",
    "404": "no SSH at",
    "503": "is not running",
    "424": "is not running",
    "500": "unexpected answer",
}


@pytest.mark.parametrize("status", REFUSALS)
async def test_a_refused_handshake_says_why(hub, status):
    url = f"http://127.0.0.1:{hub.port}/user/{status}/"
    code, out, err = await run(url, b"SSH-2.0-x\r\n")
    assert (code, out) == (255, b"")
    assert err.count("\n") == 1 and err.startswith("jupyter-gpu-meter-ssh: ")
    assert REFUSALS[status] in err and f"HTTP {status}" in err


async def test_a_wrong_token_is_forbidden(hub):
    code, _, err = await run(hub.url, env={"JUPYTERHUB_API_TOKEN": "bob-token"})
    assert (
        code == 255 and "may not reach" in err and f"http://127.0.0.1:{hub.port}/hub/token" in err
    )


async def test_nothing_listening(hub):
    sock, port = bind_unused_port()
    sock.close()
    code, _, err = await run(f"http://127.0.0.1:{port}/user/ada/")
    assert code == 255 and f"cannot reach 127.0.0.1:{port}" in err


async def test_token_file(hub, tmp_path):
    token = tmp_path / ".config" / "jupyter-gpu-meter" / "token"
    code, _, err = await run(hub.url, b"x", env={}, home=tmp_path)
    assert code == 255 and f"no token: set $JUPYTERHUB_API_TOKEN or write one to {token}" in err
    token.parent.mkdir(parents=True)
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    code, _, err = await run(hub.url, b"x", env={}, home=tmp_path)
    assert code == 255 and "may be read by others (mode 0644)" in err
    assert f"chmod 600 {token}" in err
    token.chmod(0o600)
    assert await run(hub.url, b"x", env={}, home=tmp_path) == (0, b"x", "")
    other = tmp_path / "other"
    other.write_text("not\x07printable")
    other.chmod(0o600)
    code, _, err = await run(hub.url, b"x", "--token-file", str(other), env={})
    assert code == 255 and "not one line of plain characters" in err


async def test_bad_command_lines_exit_255(tmp_path):
    code, _, err = await run("ftp://example.org/user/ada/")
    assert code == 255 and "SERVER_URL must be http(s)://" in err
    code, _, err = await run("https://127.0.0.1:1/", b"", "--cafile", str(tmp_path / "none"))
    assert code == 255 and (f"cannot use --cafile {tmp_path}" in err or "cannot reach" in err)
    code, _, err = await run("--no-such-option")
    assert code == 255 and "usage: jupyter-gpu-meter-ssh" in err


def test_help_documents_everything():
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_gpu_meter.ssh_proxy", "--help"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(PROXY.parent.parent)},
    ).stdout  # fmt: skip
    for word in ("SERVER_URL", "--token-file", "--cafile", "JUPYTERHUB_API_TOKEN", "255",
                 "chmod 600", "~/.config/jupyter-gpu-meter/token"):  # fmt: skip
        assert word in out


# --- a scripted server: what tornado never sends ------------------------------------


def server_frame(opcode, payload, fin=True):
    n = len(payload)
    if n < 126:
        size = bytes([n])
    else:
        size = (
            bytes([126]) + n.to_bytes(2, "big")
            if n < 1 << 16
            else bytes([127]) + n.to_bytes(8, "big")
        )
    return bytes([(0x80 if fin else 0) | opcode]) + size + payload


async def read_client_frame(reader):
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n >= 126:
        n = int.from_bytes(await reader.readexactly(2 if n == 126 else 8), "big")
    assert second & 0x80, "client frames are masked"
    key = await reader.readexactly(4)
    payload = await reader.readexactly(n)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def scripted(script, *, accept=None):
    """A raw websocket server running `script(reader, writer)` after the handshake."""

    async def handle(reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))  # fmt: skip
        digest = hashlib.sha1(key.encode() + ssh_proxy.GUID).digest()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + (accept or base64.b64encode(digest)) + b"\r\n\r\n"
        )
        await script(reader, writer)
        writer.close()

    return handle


async def serve(handle):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/user/ada/"


async def test_fragments_pings_and_a_close_from_the_server():
    seen = []

    async def script(reader, writer):
        writer.write(
            server_frame(0x2, b"hello ", fin=False)
            + server_frame(0x9, b"are you there")  # a ping between fragments
            + server_frame(0x0, b"frag", fin=False)
            + server_frame(0x0, b"ments\n")
            + server_frame(0x2, b"L" * 70000)  # a 64-bit length
        )
        seen.append(await read_client_frame(reader))  # the pong
        writer.write(server_frame(0x8, (1000).to_bytes(2, "big")))
        seen.append(await read_client_frame(reader))  # the close's answer

    server, url = await serve(scripted(script))
    async with server:
        code, out, err = await run(url, None)
    assert (code, err) == (0, "")
    assert out == b"hello fragments\n" + b"L" * 70000
    assert seen == [(0xA, b"are you there"), (0x8, (1000).to_bytes(2, "big"))]


async def test_stdin_closing_sends_a_close():
    seen = []

    async def script(reader, writer):
        seen.append(await read_client_frame(reader))
        seen.append(await read_client_frame(reader))
        writer.write(server_frame(0x8, b""))

    server, url = await serve(scripted(script))
    async with server:
        assert await run(url, b"bye") == (0, b"", "")
    assert seen == [(0x2, b"bye"), (0x8, (1000).to_bytes(2, "big"))]


async def test_a_server_that_is_not_a_websocket():
    async def nothing(reader, writer):
        pass

    server, url = await serve(scripted(nothing, accept=b"wrong"))
    async with server:
        code, _, err = await run(url, b"x")
    assert code == 255 and "without a valid Sec-WebSocket-Accept" in err


async def test_a_dropped_connection_is_an_error():
    async def drop(reader, writer):
        writer.write(server_frame(0x2, b"partial"))

    server, url = await serve(scripted(drop))
    async with server:
        code, out, err = await run(url, None)
    assert (code, out) == (255, b"partial")
    assert "closed the connection without a websocket close" in err


# --- the ~/.ssh/config snippet ---------------------------------------------------------


def test_config_snippet():
    assert config_snippet("https://hub.example.org/user/ada/", "ada") == (
        "Host gpu-ada\n"
        "    HostName gpu-ada\n"
        "    User jovyan\n"
        "    ProxyCommand jupyter-gpu-meter-ssh https://hub.example.org/user/ada/\n"
        "    StrictHostKeyChecking accept-new\n"
        "    ServerAliveInterval 30\n"
    )
    named = config_snippet("https://hub/user/ada%40uni/gpu1/", "ada@uni", "gpu1", login="me")
    assert named.startswith("Host gpu-ada-uni-gpu1\n")
    assert "    User me\n" in named
    assert "ProxyCommand jupyter-gpu-meter-ssh https://hub/user/ada%%40uni/gpu1/\n" in named


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hub.example.org/user/ada/", "ada"), "server_url must be an http"),
        (("https://hub/user/ada", "ada"), "ending in '/'"),
        (("https://hub/user/ada/;rm -rf ~/", "ada"), "shell characters"),
        (("https://hub/user/ada/", ""), "user must be a non-empty name"),
        (("https://hub/user/ada/", "ada\n"), "user must be"),
        (("https://hub/user/ada/x/", "ada", "x\ty"), "server must be"),
        (("https://hub/user/ada/", "ada", "", "root user"), "login must be a Unix user name"),
    ],
)
def test_config_snippet_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        config_snippet(*args)


def test_masking_is_rfc_6455():
    key = bytes([0x37, 0xFA, 0x21, 0x3D])
    # RFC 6455 5.7: "Hello" masked with 0x37fa213d
    assert ssh_proxy.mask(key, b"Hello") == bytes([0x7F, 0x9F, 0x4D, 0x51, 0x58])
    data = os.urandom(100003)
    assert ssh_proxy.mask(key, ssh_proxy.mask(key, data)) == data


def raw(answer: bytes):
    """A server that reads the request and answers `answer` (no handshake), then hangs up."""

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection before answering"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "did not answer in HTTP: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, "answered with headers over 64 KiB"),
    ],
)
async def test_answers_that_are_not_http(answer, message):
    server, url = await serve(raw(answer))
    async with server:
        code, _, err = await run(url, b"x")
    assert code == 255 and message in err


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (b"\x82\x81abcdx", "masked or extended frame"),  # a masked server frame
        (b"\xc2\x01x", "masked or extended frame"),  # RSV1 without an extension
        (b"\x89\x7e\x00\x80" + b"p" * 128, "control frame over 125 bytes"),
        (b"\x09\x00", "control frame over 125 bytes or in parts"),  # a ping without FIN
        (b"\x83\x00", "unknown opcode 3"),
    ],
)
async def test_frames_that_break_rfc_6455(frames, message):
    async def script(reader, writer):
        writer.write(frames)
        await writer.drain()
        await reader.read()  # until the client hangs up

    server, url = await serve(scripted(script))
    async with server:
        code, _, err = await run(url, None)
    assert code == 255 and message in err


async def test_tls_to_a_server_that_hangs_up():
    async def hang_up(reader, writer):
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        code, _, err = await run(f"https://127.0.0.1:{port}/user/ada/", b"x")
    assert code == 255 and f"the connection to 127.0.0.1:{port} failed" in err
