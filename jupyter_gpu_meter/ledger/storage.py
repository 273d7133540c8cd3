"""Storage: each home's and snapshot's measured size over time, and what it costs."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, func, select, update

from ..pricing import parse_currency, parse_money, storage_sums
from .engine import Database, aware, checked_text
from .models import StoragePeriodModel
from .records import StoragePeriod, StorageSum
from .state import read_state, upsert_state

_storage = StoragePeriodModel.__table__
#: the meter_state key of the last storage measurement's time
STORAGE_MEASURED_KEY = "storage-measured-at"


def _storage_record(row) -> StoragePeriod:
    return StoragePeriod(
        user=row.username,
        volume=row.volume,
        kind=row.kind,
        started_at=row.started_at,
        ended_at=row.ended_at,
        size_bytes=row.size_bytes,
        price_per_gb_month=row.price_per_gb_month,
        currency=row.currency,
    )


class StorageStore:
    """Record measuring passes of homes and snapshots; their periods and totals over a range."""

    def __init__(self, db: Database):
        self.db = db

    def add_storage_periods(self, periods: Iterable[StoragePeriod], measured_at: datetime) -> int:
        """Record one measuring pass: its periods, and `measured_at` as the last pass's
        time (what :meth:`storage_now` shows); how many periods were written.

        A period that follows its volume's last one at the same size, price
        and owner extends that row instead of adding one, so an idle home
        costs a row per change, not one per measurement. A period that
        overlaps what the volume already has is skipped: no time is billed
        twice, and a retried write changes nothing.
        """
        measured_at = aware("measured_at", measured_at)
        values = []
        for period in periods:
            started_at = aware("started_at", period.started_at)
            ended_at = aware("ended_at", period.ended_at)
            if ended_at <= started_at:
                raise ValueError(f"{period!r}: a storage period must end after it starts")
            values.append(
                {
                    "username": checked_text("user", period.user, empty=False),
                    "volume": checked_text("volume", period.volume, empty=False),
                    "kind": checked_text("kind", period.kind, most=16, empty=False),
                    "started_at": started_at,
                    "ended_at": ended_at,
                    "size_bytes": period.size_bytes,
                    "price_per_gb_month": parse_money(
                        period.price_per_gb_month, "price_per_gb_month"
                    ),
                    "currency": parse_currency(period.currency),
                }
            )
        state = upsert_state(self.db, STORAGE_MEASURED_KEY, measured_at.isoformat(), measured_at)
        c = _storage.c
        same = ("username", "kind", "size_bytes", "price_per_gb_month", "currency")
        written = 0
        with self.db.write() as connection:
            for value in values:
                last = connection.execute(
                    select(_storage)
                    .where(c.volume == value["volume"])
                    .order_by(c.ended_at.desc())
                    .limit(1)
                ).first()
                if last is not None and last.ended_at > value["started_at"]:
                    continue  # already billed
                if (
                    last is not None
                    and last.ended_at == value["started_at"]
                    and all(getattr(last, key) == value[key] for key in same)
                ):
                    byte_hours, units = storage_sums(
                        value["size_bytes"],
                        last.started_at,
                        value["ended_at"],
                        value["price_per_gb_month"],
                    )
                    connection.execute(
                        update(_storage)
                        .where(c.id == last.id)
                        .values(
                            ended_at=value["ended_at"],
                            byte_hours=byte_hours,
                            charge_units=units,
                        )
                    )
                else:
                    byte_hours, units = storage_sums(
                        value["size_bytes"],
                        value["started_at"],
                        value["ended_at"],
                        value["price_per_gb_month"],
                    )
                    connection.execute(
                        _storage.insert().values(**value, byte_hours=byte_hours, charge_units=units)
                    )
                written += 1
            connection.execute(state)
        return written

    def storage_ends(self, volumes: Iterable[str]) -> dict[str, datetime]:
        """volume -> the end of its last recorded period, for the volumes that have one.

        One index seek per volume (SQLite answers ``max`` from the index on
        (volume, ended_at) only for a single volume): 1,000 volumes in
        milliseconds, not a scan of their every period.
        """
        latest = (
            select(func.max(_storage.c.ended_at))
            .where(_storage.c.volume == bindparam("name"))
            .scalar_subquery()
        )
        ends = {}
        with self.db.read() as connection:
            for name in sorted(set(volumes)):
                end = connection.execute(select(latest), {"name": name}).scalar()
                if end is not None:
                    ends[name] = end
        return ends

    def storage_periods(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoragePeriod]:
        """Storage periods overlapping [since, until), oldest first."""
        c = _storage.c
        conditions = [] if user is None else [c.username == user]
        if since is not None:
            conditions.append(c.ended_at > aware("since", since))
        if until is not None:
            conditions.append(c.started_at < aware("until", until))
        statement = select(_storage).where(*conditions).order_by(c.ended_at, c.volume)
        with self.db.read() as connection:
            return [_storage_record(row) for row in connection.execute(statement)]

    def storage_sums(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        by_volume: bool = False,
    ) -> list[StorageSum]:
        """Storage per user and currency over [since, until): byte-hours and charge units.

        `by_volume`: per user, volume and price instead (invoice lines), with
        the first and last time billed. Periods wholly inside the range are
        added up by the database; the few crossing an edge (or too large for
        64 bits) are clipped here.
        """
        c = _storage.c
        since = None if since is None else aware("since", since)
        until = None if until is None else aware("until", until)
        mine = [] if user is None else [c.username == user]
        inside = [*mine, c.charge_units.is_not(None)]
        pieces = [[*mine, c.charge_units.is_(None)]]
        if since is not None:
            inside.append(c.started_at >= since)
            pieces.append([*mine, c.ended_at > since, c.started_at < since])
        if until is not None:
            inside.append(c.ended_at <= until)
            pieces.append([*mine, c.ended_at > until, c.started_at < until])
        keys = [c.username, c.currency]
        if by_volume:
            keys += [c.volume, c.kind, c.price_per_gb_month]
        summed = (
            select(
                *keys,
                func.sum(c.byte_hours),
                func.sum(c.charge_units),
                func.min(c.started_at),
                func.max(c.ended_at),
            )
            .where(*inside)
            .group_by(*keys)
        )
        totals: dict[tuple, list] = {}

        def add(key, byte_hours, units, first, last):
            entry = totals.setdefault(key, [0, 0, first, last])
            entry[0] += byte_hours
            entry[1] += units
            entry[2], entry[3] = min(entry[2], first), max(entry[3], last)

        found: dict[int, StoragePeriod] = {}
        with self.db.snapshot() as connection:
            for *key, byte_hours, units, first, last in connection.execute(summed):
                add(tuple(key), int(byte_hours), int(units), first, last)
            for piece in pieces:
                for row in connection.execute(select(_storage).where(*piece)):
                    found[row.id] = _storage_record(row)
        for period in found.values():
            span = period.part(since, until)
            if span is not None:
                key = (period.user, period.currency)
                if by_volume:
                    key += (period.volume, period.kind, period.price_per_gb_month)
                add(key, *period.sums(since, until), *span)
        return [
            StorageSum(*key[:2], byte_hours, units, first, last, *key[2:])
            for key, (byte_hours, units, first, last) in sorted(totals.items())
        ]

    def storage_now(self, *, user: str | None = None) -> tuple[datetime | None, list]:
        """(when the last pass measured, the volumes it measured, by user and name).

        A volume deleted since is not among them: its last period ended earlier.
        """
        with self.db.read() as connection:
            at = read_state(connection, STORAGE_MEASURED_KEY)
            if at is None:
                return None, []
            measured_at = datetime.fromisoformat(at)
            conditions = [_storage.c.ended_at == measured_at]
            if user is not None:
                conditions.append(_storage.c.username == user)
            rows = connection.execute(select(_storage).where(*conditions))
            periods = sorted(
                (_storage_record(row) for row in rows), key=lambda p: (p.user, p.volume)
            )
        return measured_at, periods
