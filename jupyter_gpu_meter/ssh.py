"""SSH public keys: what a user may add, their fingerprints, and the file sshd reads. Pure
(no I/O; the archive's default time is the clock's).

A key a user adds on the usage page or through ``api/ssh-keys`` is one line of
``authorized_keys``: ``<type> <base64 blob> [comment]`` and nothing else.
:func:`parse_public_key` decodes the blob and reads it as OpenSSH does (RFC
4253 strings and mpints): the type inside must be the type declared, an RSA
modulus has at least :data:`MIN_RSA_BITS` bits, an Ed25519 key 32 bytes, an
ECDSA key names the curve its type says. Options (``command="…"``,
``no-pty``, ``from=…``), a second key, newlines and control characters are
refused: the line the meter writes is rebuilt from the parts it checked, so
nothing a user sends reaches sshd unread.

:func:`authorized_keys_archive` makes the tar that Docker's ``put_archive``
unpacks at ``/`` of a notebook container: ``/etc/jupyter-gpu-meter/ssh/
authorized_keys``, root-owned, 0644 (sshd's ``AuthorizedKeysFile``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from .clock import utcnow

#: the most keys one user may have
MAX_KEYS_PER_USER = 20
#: the shortest RSA modulus accepted, in bits (OpenSSH refuses < 1024; NIST deprecates < 2048)
MIN_RSA_BITS = 2048
#: the longest RSA modulus accepted, in bits (ssh-keygen's own limit)
MAX_RSA_BITS = 16384
#: the longest comment, in characters
MAX_COMMENT = 200
#: the longest line, in bytes of UTF-8
MAX_LINE_BYTES = 16 * 1024
#: where sshd in the notebook container reads the keys the meter and the spawner write
AUTHORIZED_KEYS_PATH = "etc/jupyter-gpu-meter/ssh/authorized_keys"

_ECDSA = {"nistp256": (256, 32), "nistp384": (384, 48), "nistp521": (521, 66)}
#: type -> ECDSA curve name, for the ECDSA types
_CURVES = {
    "ecdsa-sha2-nistp256": "nistp256",
    "ecdsa-sha2-nistp384": "nistp384",
    "ecdsa-sha2-nistp521": "nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com": "nistp256",
}
#: the key types accepted, in the order messages list them
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)

ALLOWED = (
    "one public key on one line, as in ~/.ssh/id_ed25519.pub: '<type> <base64 key> [comment]' "
    f"with type one of {', '.join(KEY_TYPES)} (RSA at least {MIN_RSA_BITS} bits), no "
    f"options before the type, a comment of at most {MAX_COMMENT} printable characters"
)

_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_LINE = re.compile(r"(\S+)[ \t]+(\S+)(?:[ \t]+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class PublicKey:
    """One checked public key. ``line`` is what goes into ``authorized_keys``."""

    key_type: str
    #: the key's wire-format blob, base64 (as in the .pub file)
    blob_b64: str
    comment: str
    #: ``SHA256:…``, as ``ssh-keygen -lf`` prints it
    fingerprint: str
    #: the key's size: the RSA modulus' bits, the curve's for ECDSA, 256 for Ed25519
    bits: int

    @property
    def public_key(self) -> str:
        """``"<type> <blob>"``: the line without its comment (what the ledger keeps)."""
        return f"{self.key_type} {self.blob_b64}"

    @property
    def line(self) -> str:
        """``"<type> <blob> <comment>"`` (no trailing space without a comment)."""
        return f"{self.public_key} {self.comment}".rstrip(" ")


def fingerprint(blob: bytes) -> str:
    """``SHA256:<base64 of the blob's SHA-256, unpadded>``, as OpenSSH prints it."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def _refuse(problem: str) -> ValueError:
    return ValueError(f"{problem}; allowed: {ALLOWED}")


class _Reader:
    """RFC 4253 strings and mpints from a key blob."""

    def __init__(self, blob: bytes):
        self.blob, self.at = blob, 0

    def string(self, what: str) -> bytes:
        if self.at + 4 > len(self.blob):
            raise _refuse(f"the key is cut short: no {what} in it")
        size = int.from_bytes(self.blob[self.at : self.at + 4], "big")
        start, self.at = self.at + 4, self.at + 4 + size
        if self.at > len(self.blob):
            raise _refuse(f"the key is cut short: its {what} runs past its end")
        return self.blob[start : self.at]

    def mpint(self, what: str) -> int:
        data = self.string(what)
        if data and data[0] & 0x80:
            raise _refuse(f"the key's {what} is negative")
        return int.from_bytes(data, "big")

    def end(self) -> None:
        if self.at != len(self.blob):
            raise _refuse(f"the key has {len(self.blob) - self.at} bytes after its end")


def _application(reader: _Reader) -> None:
    application = reader.string("security key application")
    if not application.startswith(b"ssh:"):
        raise _refuse("a security key's application must start with 'ssh:'")


def _key_bits(key_type: str, blob: bytes) -> int:
    """Read the blob as OpenSSH does; its size in bits, or a ValueError saying what is wrong."""
    reader = _Reader(blob)
    inner = reader.string("type")
    if inner != key_type.encode("ascii"):
        shown = inner[:64].decode("ascii", "replace")
        raise _refuse(f"the key says it is {key_type} but its data is a {shown!r} key")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(reader.string("Ed25519 key")) != 32:
            raise _refuse("an Ed25519 key has 32 bytes; this one has not")
        if key_type.startswith("sk-"):
            _application(reader)
        bits = 256
    elif key_type in _CURVES:
        curve = reader.string("curve name")
        if curve != _CURVES[key_type].encode("ascii"):
            raise _refuse(f"a {key_type} key is on {_CURVES[key_type]}, this one names {curve!r}")
        bits, size = _ECDSA[_CURVES[key_type]]
        point = reader.string("ECDSA point")
        if len(point) != 1 + 2 * size or point[0] != 4:
            raise _refuse(f"the ECDSA point is not an uncompressed {_CURVES[key_type]} point")
        if key_type.startswith("sk-"):
            _application(reader)
    else:  # ssh-rsa
        exponent = reader.mpint("RSA exponent")
        bits = reader.mpint("RSA modulus").bit_length()
        if exponent < 3 or exponent % 2 == 0:
            raise _refuse("the RSA exponent must be odd and at least 3")
        if bits < MIN_RSA_BITS:
            raise _refuse(
                f"this RSA key has {bits} bits; at least {MIN_RSA_BITS} are needed "
                "(better: ssh-keygen -t ed25519)"
            )
        if bits > MAX_RSA_BITS:
            raise _refuse(f"this RSA key has {bits} bits; at most {MAX_RSA_BITS} are accepted")
    reader.end()
    return bits


def parse_public_key(text: str) -> PublicKey:
    """One ``authorized_keys`` line, checked; a ValueError that says what is allowed.

    Whitespace around the line (a trailing newline from a .pub file) is
    dropped; everything else must be one key: no options, no second line or
    key, no control characters, no private key.
    """
    if not isinstance(text, str):
        raise _refuse(f"got {type(text).__name__}, not text")
    if _PRIVATE.search(text):
        raise ValueError(
            "this is a PRIVATE key: never share it. Paste the public key instead, the one "
            "line in the file ending in .pub (e.g. ~/.ssh/id_ed25519.pub, or the output of "
            "'ssh-keygen -y -f ~/.ssh/id_ed25519')"
        )
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise _refuse(
            "this is a key in the RFC 4716 format: convert it with 'ssh-keygen -i -f <file>'"
        )
    if len(text.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise _refuse(f"the text is longer than {MAX_LINE_BYTES} bytes")
    line = text.strip()
    if not line:
        raise _refuse("the key is empty")
    if "\n" in line or "\r" in line:
        raise _refuse("the text has more than one line (add one key at a time)")
    match = _LINE.fullmatch(line)
    first = line.split(None, 1)[0]
    if first not in KEY_TYPES:
        if any(word in KEY_TYPES for word in line.split()):
            raise _refuse(f"options before the key type ({first[:40]!r}) are not allowed")
        raise _refuse(f"{first[:40]!r} is not an accepted key type")
    if match is None:
        raise _refuse("the key's base64 data is missing")
    key_type, blob_b64, comment = match.group(1), match.group(2), match.group(3) or ""
    try:
        blob = base64.b64decode(blob_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _refuse("the key's data is not base64") from None
    if base64.b64encode(blob).decode("ascii") != blob_b64:
        raise _refuse("the key's base64 data is not in its one standard form")
    bits = _key_bits(key_type, blob)
    comment = comment.strip(" \t")
    if any(not ch.isprintable() for ch in comment):
        raise _refuse("the comment has control characters")
    if len(comment) > MAX_COMMENT:
        raise _refuse(f"the comment has {len(comment)} characters")
    if any(word in KEY_TYPES for word in comment.split()):
        raise _refuse("the comment holds a second key (add one key at a time)")
    return PublicKey(key_type, blob_b64, comment, fingerprint(blob), bits)


def _line_of(key) -> str:
    """A checked line for `key`: a PublicKey, a ledger record, or the text of one."""
    if isinstance(key, PublicKey):
        return key.line
    if isinstance(key, str):
        return parse_public_key(key).line
    # a ledger record (SSHKeyRecord): checked again, so a row changed behind the
    # meter's back cannot put options into the file sshd reads
    return parse_public_key(f"{key.public_key} {key.comment}").line


def authorized_keys_text(keys: Iterable) -> str:
    """The ``authorized_keys`` file for `keys` (PublicKey, ledger records or lines): one line
    each, in order, each ending in a newline; "" for none."""
    return "".join(_line_of(key) + "\n" for key in keys)


def _member(name: str, *, directory: bool, mtime: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.size = size
    info.mtime = mtime
    return info


def authorized_keys_archive(keys: Iterable, *, mtime: int | None = None) -> bytes:
    """A tar for ``put_archive(container, "/", …)``: ``etc/``, ``etc/jupyter-gpu-meter/``,
    ``etc/jupyter-gpu-meter/ssh/`` (directories 0755, root) and ``authorized_keys`` in
    it (0644, root) holding :func:`authorized_keys_text` of `keys`. No keys: an empty
    file, so removed keys stop working.

    `mtime` (seconds since the epoch): the members' time, now by default. Docker
    gives existing directories the archive's times too, so ``/etc`` would read 1970
    after a write with a fixed 0.
    """
    if mtime is None:
        mtime = int(utcnow().timestamp())
    data = authorized_keys_text(keys).encode("utf-8")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        parts = AUTHORIZED_KEYS_PATH.split("/")
        for depth in range(1, len(parts)):
            tar.addfile(_member("/".join(parts[:depth]) + "/", directory=True, mtime=mtime))
        member = _member(AUTHORIZED_KEYS_PATH, directory=False, size=len(data), mtime=mtime)
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
