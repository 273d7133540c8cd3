"""The ledger: sessions, rollups, processes, storage, state, decisions, budgets, SSH keys,
nodes (SQLAlchemy 2).

One module per aggregate, behind the :class:`Ledger` facade (see :mod:`.store`).
"""

from .buffer import WriteBuffer, is_transient
from .engine import DB_URL_ENV, DEFAULT_URL, default_url, make_engine
from .nodes import LOST_AFTER_HEARTBEATS, NODE_LOST, NodeGPU, NodeRecord
from .records import (
    BudgetChange,
    BudgetRecord,
    DecisionRecord,
    EfficiencySum,
    MinuteBusy,
    MinuteUtilization,
    ProcessGroupUsage,
    ProcessUsageRow,
    Rollup,
    RollupRow,
    SessionEfficiency,
    SessionRecord,
    SSHKeyRecord,
    StoragePeriod,
    StorageSum,
    UsageSum,
    truncate_to_minute,
)
from .schema import LedgerSchemaError
from .ssh_keys import DuplicateKey, TooManyKeys
from .store import Ledger
from .types import Money, UTCDateTime

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_URL",
    "BudgetChange",
    "BudgetRecord",
    "DecisionRecord",
    "DuplicateKey",
    "EfficiencySum",
    "Ledger",
    "LOST_AFTER_HEARTBEATS",
    "LedgerSchemaError",
    "MinuteBusy",
    "MinuteUtilization",
    "Money",
    "NODE_LOST",
    "NodeGPU",
    "NodeRecord",
    "ProcessGroupUsage",
    "ProcessUsageRow",
    "Rollup",
    "RollupRow",
    "SessionEfficiency",
    "SSHKeyRecord",
    "SessionRecord",
    "StoragePeriod",
    "StorageSum",
    "TooManyKeys",
    "UTCDateTime",
    "UsageSum",
    "WriteBuffer",
    "default_url",
    "is_transient",
    "make_engine",
    "truncate_to_minute",
]
