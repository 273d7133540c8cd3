"""SSH's ProxyCommand for a GPU server: stdin/stdout <-> a websocket to the server's sshd.

Carries ssh's bytes as binary websocket frames (RFC 6455) to ``<server URL>sshd/``,
where the hub checks the token. Standard library only, one file: the meter serves
it as the wheel ``jupyter-gpu-meter-ssh`` (:mod:`jupyter_gpu_meter.ssh_wheel`).
Also :func:`config_snippet`, the ``~/.ssh/config`` lines the usage page shows.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import queue
import re
import socket
import ssl
import stat
import sys
import threading
from urllib.parse import urljoin, urlsplit

PROG = "jupyter-gpu-meter-ssh"
TOKEN_ENV = "JUPYTERHUB_API_TOKEN"  # noqa: S105 (a variable's name)
TOKEN_FILE = "~/.config/jupyter-gpu-meter/token"  # noqa: S105 (a path)
#: how much is read from stdin or the socket at once (large, so scp is fast)
CHUNK = 256 * 1024
#: seconds to reach the hub and finish the handshake
CONNECT_TIMEOUT = 30
#: seconds to wait for the server's close after stdin ends
CLOSE_WAIT = 5
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: what a server URL in a snapshot may hold: no spaces, quotes or shell syntax
SAFE_URL = re.compile(r"https?://[A-Za-z0-9._~:/@%+=,-]+/")
SAFE_LOGIN = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")


class ProxyError(Exception):
    """Why the client cannot go on; the message says what to do (exit status 255)."""


def host_alias(user: str, server: str = "") -> str:
    """``gpu-<user>`` or ``gpu-<user>-<server>``; characters ssh would misread become ``-``."""
    name = f"gpu-{user}-{server}" if server else f"gpu-{user}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def config_snippet(server_url: str, user: str, server: str = "", login: str = "jovyan") -> str:
    """The ``~/.ssh/config`` block that makes ``ssh gpu-<user>[-<server>]`` reach a server.

    `server_url` is the server's URL (``https://hub.example.org/user/ada/``, a named
    server's ``.../user/ada/gpu1/``), `login` the container's user. ``ValueError``
    says what is allowed when an argument would break the file or ssh's command line.
    """
    if not SAFE_URL.fullmatch(server_url):
        raise ValueError(
            f"server_url must be an http:// or https:// URL ending in '/', without spaces, "
            f"quotes or shell characters, e.g. https://hub.example.org/user/ada/ "
            f"(got {server_url!r})"
        )
    for what, value in (("user", user), ("server", server)):
        if (value or what == "user") and (not value.isprintable() or not value.strip()):
            raise ValueError(f"{what} must be a non-empty name without control characters")
    if not SAFE_LOGIN.fullmatch(login):
        raise ValueError(f"login must be a Unix user name such as jovyan (got {login!r})")
    alias = host_alias(user, server)
    # ssh expands %h, %p, ... in ProxyCommand: a URL's %-escape is written %%
    command = f"{PROG} {server_url.replace('%', '%%')}"
    lines = [f"HostName {alias}", f"User {login}", f"ProxyCommand {command}"]
    lines += ["StrictHostKeyChecking accept-new", "ServerAliveInterval 30"]
    return f"Host {alias}\n" + "".join(f"    {line}\n" for line in lines)


def read_token(token_file: str | None, environ=os.environ) -> str:
    """The token: ``$JUPYTERHUB_API_TOKEN``, else the token file (refused when others may
    read it, as ssh refuses such a private key)."""
    token = environ.get(TOKEN_ENV, "").strip()
    source = f"${TOKEN_ENV}"
    if not token:
        path = os.path.expanduser(token_file or TOKEN_FILE)
        source = path
        try:
            with open(path, encoding="utf-8") as file:
                mode = os.fstat(file.fileno()).st_mode
                if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise ProxyError(
                        f"{path} may be read by others (mode {stat.S_IMODE(mode):04o}); "
                        f"run: chmod 600 {path}"
                    )
                token = file.read().strip()
        except FileNotFoundError:
            raise ProxyError(
                f"no token: set ${TOKEN_ENV} or write one to {path} (chmod 600); "
                "make one on the hub's Token page (/hub/token)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ProxyError(f"cannot read the token file {path}: {error}") from None
    if not token or not token.isprintable() or " " in token:
        raise ProxyError(f"the token in {source} is empty or not one line of plain characters")
    return token


class Plain:
    """A TCP connection; ``send`` is whole (frames never interleave), ``recv`` one thread's."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send:
            self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(CHUNK)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class TLS(Plain):
    """TLS in memory buffers: an SSLSocket may not be read and written by two threads at
    once; the TLS state (``_lock``) is held only to encrypt or decrypt, never while the
    socket blocks, and ``_send`` (taken before ``_lock`` is let go) keeps records in order."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str):
        super().__init__(sock)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._lock = threading.Lock()
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self._out.read())
                data = self.sock.recv(CHUNK)
                if not data:
                    raise ConnectionError("the server closed the connection during TLS") from None
                self._in.write(data)
        self.sock.sendall(self._out.read())

    def _flush(self, records: bytes) -> None:
        try:
            self.sock.sendall(records)
        finally:
            self._send.release()

    def send(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[self._tls.write(view) :]
            records = self._out.read()
            self._send.acquire()
        self._flush(records)

    def recv(self) -> bytes:
        while True:
            with self._lock:
                try:
                    data = self._tls.read(CHUNK)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:
                    data = b""
                records = self._out.read()
                if records:
                    self._send.acquire()
            if records:
                self._flush(records)
            if data is not None:
                return data
            raw = self.sock.recv(CHUNK)
            if not raw:
                return b""
            with self._lock:
                self._in.write(raw)


def websocket_url(server_url: str) -> str:
    """``<server URL>sshd/`` with ws:// or wss://."""
    return re.sub("^http", "ws", server_url.rstrip("/") + "/sshd/")


def hub_url(server_url: str) -> str:
    """The hub's base URL: everything before ``user/<name>/``."""
    base, found, _ = server_url.partition("/user/")
    return base + "/" if found else server_url


def redirected_status(status: int, location: str, server_url: str) -> int:
    """A redirect's meaning: to ``…/sshd`` (jupyter_server has no such route: SSH off)
    404, to the hub's ``/hub/user/…`` (a stopped server) 503, else (login) `status`."""
    sshd = urlsplit(websocket_url(server_url)).path  # /user/ada/sshd/
    target = urlsplit(urljoin(server_url, location)).path if 300 <= status < 400 else None
    base, _, tail = sshd.rpartition("/user/")
    return {sshd.rstrip("/"): 404, f"{base}/hub/user/{tail}": 503}.get(target, status)


def refusal(status: int, reason: str, server_url: str, token_file: str, location="") -> str:
    """The one line a refused handshake prints: why, and what to do."""
    hub, answer, ws = (
        hub_url(server_url),
        f"HTTP {status} {reason}".strip(),
        websocket_url(server_url),
    )
    status = redirected_status(status, location, server_url)
    if status == 401 or 300 <= status < 400:
        why = f"the hub did not accept the token ({answer}): make a new one at {hub}hub/token "
        return why + f"and put it in ${TOKEN_ENV} or {token_file}"
    if status == 403:
        why = f"the token may not reach {server_url} ({answer}): use a token of the server's "
        return why + f"owner that allows access:servers (make one at {hub}hub/token)"
    if status == 404:
        why = f"no SSH at {ws} ({answer}): the server is not running, SSH is off for it, "
        return why + f"or the URL is wrong; start it at {hub}hub/home"
    if status in (424, 502, 503):
        return f"the server {server_url} is not running ({answer}): start it at {hub}hub/home"
    return f"unexpected answer from {ws}: {answer}"


def connect(server_url: str, token: str, *, cafile=None, token_file=TOKEN_FILE):
    """A connection whose websocket handshake succeeded, and the bytes read past it."""
    url = urlsplit(server_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ProxyError(f"SERVER_URL must be http(s)://host/user/<name>/ (got {server_url!r})")
    secure = url.scheme == "https"
    port = url.port or (443 if secure else 80)
    where = f"{url.hostname}:{port}"
    try:
        sock = socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT)
    except OSError as error:
        raise ProxyError(f"cannot reach {where}: {error}; check the URL and your network") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if secure:
            conn = TLS(sock, _tls_context(cafile), url.hostname)
        else:
            conn = Plain(sock)
        rest = _handshake(conn, url, token, server_url, token_file)
    except (ProxyError, ssl.SSLError, OSError) as error:
        sock.close()
        if isinstance(error, ProxyError):
            raise
        if isinstance(error, ssl.SSLCertVerificationError):
            why = f"the TLS certificate of {where} is not trusted ({error.verify_message}); "
            raise ProxyError(why + "for a hub with a private CA, give --cafile") from None
        raise ProxyError(f"the connection to {where} failed: {error}") from None
    sock.settimeout(None)
    return conn, rest


def _tls_context(cafile) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as error:
        raise ProxyError(f"cannot use --cafile {cafile}: {error}; give a PEM file") from None


def _handshake(conn, url, token: str, server_url: str, token_file: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    path = urlsplit(websocket_url(server_url)).path
    conn.send(
        (
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n"
            f"User-Agent: {PROG}\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:  # (frames may follow the headers in one read)
        if len(data) > 65536:
            raise ProxyError(f"{url.netloc} answered with headers over 64 KiB")
        more = conn.recv()
        if not more:
            raise ProxyError(f"{url.netloc} closed the connection before answering")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"{url.netloc} did not answer in HTTP: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if status != 101:
        reason, location = (parts + [""])[2], headers.get("location", "")
        raise ProxyError(refusal(status, reason, server_url, token_file, location))
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()  # noqa: S324
    if headers.get("upgrade", "").lower() != "websocket" or (
        headers.get("sec-websocket-accept") != expected
    ):
        raise ProxyError(
            f"{url.netloc} answered the upgrade without a valid Sec-WebSocket-Accept: "
            "something between you and the hub does not pass websockets"
        )
    return rest


def mask(key: bytes, data) -> bytes:
    """`data` XOR the 4-byte `key` repeated (RFC 6455 5.3), in one big-integer XOR."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def frame(opcode: int, payload=b"") -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + mask(key, payload)


class Frames:
    """Server frames from a byte stream: data as it arrives (messages may be fragmented,
    a frame's payload is passed on before its end), control frames whole."""

    def __init__(self):
        self.buf = bytearray()
        self.left = 0  # payload bytes still to come of the current data frame

    def feed(self, data: bytes) -> list:
        """``(opcode, payload)`` pairs for `data`; data frames' pieces as ``BINARY``."""
        self.buf += data
        buf, events = self.buf, []
        while True:
            if self.left:
                if not buf:
                    return events
                piece = bytes(buf[: self.left])
                del buf[: len(piece)]
                self.left -= len(piece)
                events.append((BINARY, piece))
                continue
            if len(buf) < 2:
                return events
            first, second = buf[0], buf[1]
            opcode, n, start = first & 0x0F, second & 0x7F, 2
            if first & 0x70 or second & 0x80:
                raise ProxyError("the server sent a masked or extended frame (not RFC 6455)")
            if n >= 126:
                start = 4 if n == 126 else 10
                if len(buf) < start:
                    return events
                n = int.from_bytes(buf[2:start], "big")
            if opcode in (CLOSE, PING, PONG):
                if n > 125 or not first & 0x80:
                    raise ProxyError("the server sent a control frame over 125 bytes or in parts")
                if len(buf) < start + n:
                    return events
                events.append((opcode, bytes(buf[start : start + n])))
                del buf[: start + n]
            elif opcode in (CONT, TEXT, BINARY):
                del buf[:start]
                self.left = n
            else:
                raise ProxyError(f"the server sent a frame with unknown opcode {opcode}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(conn, rest: bytes = b"", stdin: int = 0, stdout: int = 1) -> int:
    """Carry stdin to the server and the server to stdout until one side closes: 0, or
    255 after one line on stderr when the connection breaks."""
    done: queue.Queue = queue.Queue()
    closing = threading.Event()  # our close frame is sent

    def send_close(payload=b"\x03\xe8"):  # 1000: normal closure
        if not closing.is_set():
            closing.set()
            conn.send(frame(CLOSE, payload))

    def downstream():
        frames, data = Frames(), rest
        try:
            while True:
                for opcode, payload in frames.feed(data):
                    if opcode == BINARY:
                        _write_all(stdout, payload)
                    elif opcode == PING:
                        conn.send(frame(PONG, payload))
                    elif opcode == CLOSE:
                        send_close(payload[:2])
                        return done.put(0)
                data = conn.recv()
                if not data:
                    if closing.is_set():
                        return done.put(0)
                    return done.put("the server closed the connection without a websocket close")
        except BrokenPipeError:
            done.put(0)  # ssh has gone
        except (ProxyError, OSError, ssl.SSLError) as error:
            done.put(0 if closing.is_set() else f"the connection was lost: {error}")

    def upstream():
        try:
            while True:
                data = os.read(stdin, CHUNK)
                if not data:
                    send_close()
                    return done.put("eof")
                conn.send(frame(BINARY, data))
        except (OSError, ssl.SSLError) as error:
            done.put(0 if closing.is_set() else f"the connection was lost: {error}")

    for target in (downstream, upstream):
        threading.Thread(target=target, daemon=True).start()
    try:
        result = done.get()
        if result == "eof":  # we closed: let the server finish and answer
            result = done.get(timeout=CLOSE_WAIT)
    except queue.Empty:
        result = 0
    except KeyboardInterrupt:
        result = "interrupted"
    conn.close()
    if result:
        print(f"{PROG}: {result}", file=sys.stderr)
        return 255
    return 0


HELP = f"""\
Connect ssh to a GPU server through the hub: use as ssh's ProxyCommand, e.g.
  ssh -o ProxyCommand='{PROG} https://hub.example.org/user/ada/' jovyan@gpu-ada
or with the Host block from the usage page in ~/.ssh/config. Bytes on stdin go to
the server's sshd as websocket frames to SERVER_URL + "sshd/"; its answers come
out on stdout.
"""
EPILOG = f"""\
token:
  ${TOKEN_ENV} if set, else the file --token-file (default {TOKEN_FILE}),
  which only you may read (chmod 600; like ssh with private keys, the file is
  refused otherwise). Make a token on the hub's Token page (/hub/token). The
  token is sent as "Authorization: token ..." and never on a command line.

exit status:
  0    ssh or the server closed the connection
  255  an error; one line on stderr says why and what to do (no or bad token,
       token may not reach this server, server not running or SSH off,
       TLS certificate not trusted, network errors, bad command line)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(255, f"{self.prog}: {message}\n")


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    cli = _Parser(prog=PROG, description=HELP, epilog=EPILOG, formatter_class=raw)
    url = "the server's URL: https://HUB/user/NAME/, a named server's https://HUB/user/NAME/SERVER/"
    cli.add_argument("server_url", metavar="SERVER_URL", help=url)
    tokens = f"the file with the hub token when ${TOKEN_ENV} is not set (default: {TOKEN_FILE})"
    cli.add_argument("--token-file", metavar="PATH", default=TOKEN_FILE, help=tokens)
    ca = "PEM file of the CA that signed the hub's certificate (default: the system's CAs)"
    cli.add_argument("--cafile", metavar="PATH", help=ca)
    return cli


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    server_url = args.server_url if args.server_url.endswith("/") else args.server_url + "/"
    try:
        token = read_token(args.token_file)
        conn, rest = connect(server_url, token, cafile=args.cafile, token_file=args.token_file)
    except ProxyError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 255
    return pump(conn, rest)


if __name__ == "__main__":
    sys.exit(main())
