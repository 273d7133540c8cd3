"""``jupyter-gpu-meter upgrade-db``: create or migrate the ledger's tables."""

from __future__ import annotations

from ..ledger import Ledger
from .common import _LedgerCommand


class UpgradeDBCommand(_LedgerCommand):
    """Create the ledger's tables, or migrate them to this version (alembic)."""

    name = "jupyter-gpu-meter upgrade-db"
    description = __doc__

    def start(self):
        with Ledger(self.db_url) as ledger:
            ledger.upgrade()
            print(f"ledger {ledger.url} is up to date")
