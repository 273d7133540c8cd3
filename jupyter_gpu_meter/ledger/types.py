"""Column types that behave the same on SQLite and PostgreSQL.

Kept apart from the models: migrations import them, so they must stay stable.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import DateTime, Numeric, String
from sqlalchemy.types import TypeDecorator

from ..pricing import MONEY_PLACES, parse_money

_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)


class UTCDateTime(TypeDecorator):
    """A point in time, stored as UTC with microseconds, read back timezone-aware UTC.

    PostgreSQL: ``timestamp with time zone``. SQLite: SQLAlchemy's fixed-width
    text (``2026-11-27 16:01:02.123456``, UTC), which sorts and compares in time
    order. Naive datetimes are refused on write: their zone is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value!r} refused: the ledger stores timezone-aware UTC; "
                "use jupyter_gpu_meter.clock.utcnow() or datetime.now(timezone.utc)"
            )
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Money(TypeDecorator):
    """A non-negative amount with at most 6 decimal places, read back as ``Decimal``.

    PostgreSQL: ``NUMERIC(18, 6)``. SQLite has no decimal type (it would keep a
    float), so there it is fixed-point text, ``'2.490000'``. Either way the value
    read back is quantized to 6 places: ``Decimal('2.490000')``.
    """

    impl = Numeric(18, MONEY_PLACES, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(Numeric(18, MONEY_PLACES, asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        amount = parse_money(value).quantize(_QUANTUM)
        return str(amount) if dialect.name == "sqlite" else amount

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return Decimal(value).quantize(_QUANTUM)
