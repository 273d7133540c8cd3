"""The ledger: sessions, rollups, storage, meter state, decisions, budgets (SQLAlchemy 2)."""

from .buffer import WriteBuffer, is_transient
from .records import (
    BudgetChange,
    BudgetRecord,
    DecisionRecord,
    MinuteUtilization,
    Rollup,
    RollupRow,
    SessionRecord,
    StoragePeriod,
    StorageSum,
    UsageSum,
    truncate_to_minute,
)
from .schema import LedgerSchemaError
from .store import DEFAULT_URL, Ledger, make_engine
from .types import Money, UTCDateTime

__all__ = [
    "DEFAULT_URL",
    "BudgetChange",
    "BudgetRecord",
    "DecisionRecord",
    "Ledger",
    "LedgerSchemaError",
    "MinuteUtilization",
    "Money",
    "Rollup",
    "RollupRow",
    "SessionRecord",
    "StoragePeriod",
    "StorageSum",
    "UTCDateTime",
    "UsageSum",
    "WriteBuffer",
    "is_transient",
    "make_engine",
    "truncate_to_minute",
]
