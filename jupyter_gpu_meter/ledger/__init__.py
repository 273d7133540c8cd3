"""The ledger: sessions, rollups, processes, storage, state, decisions, budgets (SQLAlchemy 2).

One module per aggregate, behind the :class:`Ledger` facade (see :mod:`.store`).
"""

from .buffer import WriteBuffer, is_transient
from .engine import DB_URL_ENV, DEFAULT_URL, default_url, make_engine
from .records import (
    BudgetChange,
    BudgetRecord,
    DecisionRecord,
    EfficiencySum,
    MinuteUtilization,
    ProcessGroupUsage,
    ProcessUsageRow,
    Rollup,
    RollupRow,
    SessionEfficiency,
    SessionRecord,
    StoragePeriod,
    StorageSum,
    UsageSum,
    truncate_to_minute,
)
from .schema import LedgerSchemaError
from .store import Ledger
from .types import Money, UTCDateTime

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_URL",
    "BudgetChange",
    "BudgetRecord",
    "DecisionRecord",
    "EfficiencySum",
    "Ledger",
    "LedgerSchemaError",
    "MinuteUtilization",
    "Money",
    "ProcessGroupUsage",
    "ProcessUsageRow",
    "Rollup",
    "RollupRow",
    "SessionEfficiency",
    "SessionRecord",
    "StoragePeriod",
    "StorageSum",
    "UTCDateTime",
    "UsageSum",
    "WriteBuffer",
    "default_url",
    "is_transient",
    "make_engine",
    "truncate_to_minute",
]
