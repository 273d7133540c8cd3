"""Alembic migrations of the ledger; run them with Ledger.upgrade(), not with alembic.ini."""
