"""Users' SSH public keys: at most :data:`~jupyter_gpu_meter.ssh.MAX_KEYS_PER_USER` each,
one row per key and user (a key's fingerprint is unique per user, not across users)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError

from ..ssh import MAX_KEYS_PER_USER, PublicKey
from .engine import Database, aware, checked_text
from .models import SSHKeyModel
from .records import SSHKeyRecord

_keys = SSHKeyModel.__table__


class DuplicateKey(ValueError):
    """The user has this key already (same fingerprint)."""


class TooManyKeys(ValueError):
    """The user has :data:`~jupyter_gpu_meter.ssh.MAX_KEYS_PER_USER` keys already."""


def _record(row) -> SSHKeyRecord:
    return SSHKeyRecord(
        id=row.id,
        user=row.username,
        fingerprint=row.fingerprint,
        key_type=row.key_type,
        public_key=row.public_key,
        comment=row.comment,
        added_at=row.added_at,
    )


class SSHKeyStore:
    """Add, list and remove users' SSH keys."""

    def __init__(self, db: Database):
        self.db = db

    def ssh_keys(self, user: str) -> list[SSHKeyRecord]:
        """`user`'s keys, oldest first (the order of their authorized_keys file)."""
        statement = (
            select(_keys).where(_keys.c.username == user).order_by(_keys.c.added_at, _keys.c.id)
        )
        with self.db.read() as connection:
            return [_record(row) for row in connection.execute(statement)]

    def add_ssh_key(self, user: str, key: PublicKey, at: datetime) -> SSHKeyRecord:
        """Add a checked key (:func:`jupyter_gpu_meter.ssh.parse_public_key`) for `user`.

        :class:`DuplicateKey` if `user` has it already, :class:`TooManyKeys` at
        the limit (both ValueErrors whose text says what to do). SQLite takes its
        write lock at BEGIN and PostgreSQL a lock per user, so two adds at once
        never pass the limit together.
        """
        if not isinstance(key, PublicKey):
            raise TypeError(f"expected a PublicKey from jupyter_gpu_meter.ssh, got {key!r}")
        values = {
            "username": checked_text("user", user, empty=False),
            "fingerprint": key.fingerprint,
            "key_type": key.key_type,
            "public_key": key.public_key,
            "comment": key.comment,
            "added_at": aware("at", at),
        }
        count = select(func.count()).select_from(_keys).where(_keys.c.username == user)
        try:
            with self.db.write() as connection:
                if self.db.dialect == "postgresql":  # one add per user at a time: the count holds
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                        {"key": f"jgm-ssh-keys:{user}"},
                    )
                if connection.execute(count).scalar_one() >= MAX_KEYS_PER_USER:
                    raise TooManyKeys(
                        f"{user} has {MAX_KEYS_PER_USER} SSH keys, the most allowed: "
                        "remove one before adding another"
                    )
                new_id = connection.execute(_keys.insert().values(**values)).inserted_primary_key[0]
                row = connection.execute(select(_keys).where(_keys.c.id == new_id)).one()
        except IntegrityError:
            raise DuplicateKey(
                f"{user} has this key ({key.fingerprint}) already: each key is added once"
            ) from None
        return _record(row)

    def remove_ssh_key(self, user: str, key_id: int) -> SSHKeyRecord | None:
        """Remove `user`'s key `key_id`; the key removed, or None (no such key of theirs).

        Truthy exactly when a key was removed, so ``if ledger.remove_ssh_key(…)``
        reads as the spec's bool; the record tells the API what was removed.
        """
        if isinstance(key_id, bool) or not isinstance(key_id, int):
            raise ValueError(f"key id {key_id!r} is not allowed: give a whole number")
        if not 0 < key_id < 2**31:  # the column's range: no such key
            return None
        where = (_keys.c.username == user, _keys.c.id == key_id)
        with self.db.write() as connection:
            row = connection.execute(select(_keys).where(*where)).one_or_none()
            if row is None:
                return None
            connection.execute(delete(_keys).where(*where))
        return _record(row)
