"""The ledger: sessions, per-minute GPU rollups and meter state (SQLAlchemy 2 + alembic)."""

from .buffer import WriteBuffer, is_transient
from .records import Rollup, RollupRow, SessionRecord, truncate_to_minute
from .schema import LedgerSchemaError
from .store import DEFAULT_URL, Ledger, make_engine
from .types import Money, UTCDateTime

__all__ = [
    "DEFAULT_URL",
    "Ledger",
    "LedgerSchemaError",
    "Money",
    "Rollup",
    "RollupRow",
    "SessionRecord",
    "UTCDateTime",
    "WriteBuffer",
    "is_transient",
    "make_engine",
    "truncate_to_minute",
]
