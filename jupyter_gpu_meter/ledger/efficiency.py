"""How busy sessions' GPUs were and the energy they used, from the rollups, added up in SQL."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, case, func, select, update

from ..pricing import energy_units
from .engine import Database, aware
from .models import RollupModel, SessionModel
from .records import EfficiencySum, SessionEfficiency

_rollups = RollupModel.__table__
_sessions = SessionModel.__table__

#: busy_source of a session whose GPUs' sources differ
MIXED = "mixed"


def _source(low: str | None, high: str | None) -> str:
    """One busy source from the least and greatest of a session's: "" when none."""
    if low is None:
        return ""
    return low if low == high else MIXED


def _sampled_source():
    """The rows' busy_source where they measured busy time (energy-only rows, and rows
    written before busy time was measured, say nothing)."""
    r = _rollups.c
    return case(((r.samples > 0) & (r.busy_source != ""), r.busy_source), else_=None)


def _busy_samples():
    """The rows' samples that measured busy time: none in rows written before it was."""
    r = _rollups.c
    return case((r.busy_source != "", r.samples), else_=0)


def _none_or_int(value) -> int | None:
    return None if value is None else int(value)


class EfficiencyStore:
    """Busy GPU-time, peak memory and energy per session, and per user over a range."""

    def __init__(self, db: Database):
        self.db = db

    def efficiency_of(self, session_ids: Iterable[int]) -> dict[int, SessionEfficiency]:
        """Each session's busy GPU-time, peak memory, energy and busy source, in one
        query over its rollups (their primary key starts with the session).

        Every asked session is in the result; one without any GPU sample (CPU
        only, or never sampled) has None figures and busy source "".
        """
        ids = sorted(set(session_ids))
        result = {
            session_id: SessionEfficiency(session_id, None, None, None, "") for session_id in ids
        }
        if not ids:
            return result
        r = _rollups.c
        source = _sampled_source()
        statement = (
            select(
                r.session_id,
                func.sum(r.samples),
                func.sum(_busy_samples()),
                func.sum(r.busy_ms),
                func.max(r.memory_max_bytes),
                func.sum(r.energy_mj),
                func.min(source),
                func.max(source),
            )
            .where(r.session_id.in_(ids))
            .group_by(r.session_id)
        )
        with self.db.read() as connection:
            rows = connection.execute(statement).all()
        for session_id, samples, busy_samples, busy, memory, energy, low, high in rows:
            result[session_id] = SessionEfficiency(
                session_id=session_id,
                busy_gpu_ms=int(busy) if busy_samples else None,
                memory_max_bytes=int(memory) if samples else None,
                energy_mj=_none_or_int(energy),
                busy_source=_source(low, high),
            )
        return result

    def efficiency_by_user(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[EfficiencySum]:
        """Busy GPU-time, energy and its charge per user and currency over [since, until).

        Counts the rollup minutes that start inside the range. Each session's
        energy is priced at its own snapshot's ``energy_price_per_kwh`` (rounded
        per session, half up, to a :data:`~jupyter_gpu_meter.pricing.CHARGE_UNITS`
        part) and the parts added up per user and currency. Users without a
        rollup in the range are not listed; by user, then currency.

        Split like :meth:`~.sessions.SessionStore.usage_sums`: the database
        adds up the stored sums of the closed sessions whose rollups all lie
        inside the range; the running ones (sums not stored) and those whose
        rollups cross an edge of the range are added up from their rollups in
        the range. Each part has an index.
        """
        s, r = _sessions.c, _rollups.c
        since = None if since is None else aware("since", since)
        until = None if until is None else aware("until", until)
        mine = [] if user is None else [s.username == user]
        inside = [*mine, s.rollup_samples.is_not(None), s.rollups_until.is_not(None)]
        if since is not None:
            inside += [s.rollups_from >= since, s.rollups_until >= since]
        if until is not None:
            inside.append(s.rollups_until < until)
        # the rest, in pieces that each have an index: not summed, crossing an edge
        pieces = [[*mine, s.rollup_samples.is_(None)]]
        for edge in (since, until):
            if edge is not None:
                pieces.append([*mine, s.rollups_until >= edge, s.rollups_from < edge])
        summed = (
            select(
                s.username,
                s.currency,
                func.sum(s.rollup_samples),
                func.sum(s.busy_ms),
                func.sum(s.energy_mj),
                func.sum(s.energy_units),
            )
            .where(*inside)
            # currency first: grouping by username would tempt SQLite's planner (no
            # statistics) to walk all of (username, rollups_until) instead of the range
            .group_by(s.currency, s.username)
        )
        sums: dict[tuple[str, str], list] = {}
        with self.db.snapshot() as connection:
            for name, currency, samples, busy, energy, units in connection.execute(summed):
                _add(sums, name, currency, samples, busy, energy, int(units or 0))
            others = {}
            for piece in pieces:
                for row in connection.execute(
                    select(s.id, s.username, s.currency, s.energy_price_per_kwh).where(*piece)
                ):
                    others[row.id] = row
            ids = sorted(others)
            for chunk in (ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)):
                in_range = [r.session_id.in_(chunk)]
                if since is not None:
                    in_range.append(r.minute >= since)
                if until is not None:
                    in_range.append(r.minute < until)
                statement = (
                    select(
                        r.session_id,
                        func.sum(_busy_samples()),
                        func.sum(r.busy_ms),
                        func.sum(r.energy_mj),
                    )
                    .where(*in_range)
                    .group_by(r.session_id)
                )
                for session_id, samples, busy, energy in connection.execute(statement):
                    session = others[session_id]
                    units = (
                        0
                        if energy is None
                        else energy_units(int(energy), session.energy_price_per_kwh)
                    )
                    _add(sums, session.username, session.currency, samples, busy, energy, units)
        return [
            EfficiencySum(
                user=name, busy_gpu_ms=busy, energy_mj=energy, energy_units=units, currency=currency
            )
            for (name, currency), (busy, energy, units) in sorted(sums.items())
        ]


#: session ids per statement of the rollups' part
_CHUNK = 500


def _add(sums: dict, user: str, currency: str, samples, busy, energy, units: int) -> None:
    """Add one session's (or one sum's) figures to `user`'s in `currency`."""
    entry = sums.setdefault((user, currency), [None, None, 0])
    if samples:
        entry[0] = (entry[0] or 0) + int(busy)
    if energy is not None:
        entry[1] = (entry[1] or 0) + int(energy)
    entry[2] += units


#: the largest whole number a database's BIGINT holds
_BIGINT_MAX = 2**63 - 1


def refresh_sums(connection, session_ids: Iterable[int]) -> None:
    """Store the rollups of these sessions, added up, in their rows, where they are closed
    (in the caller's transaction: when a session closes, and when rollups of a closed
    session are written later). A session whose energy charge would not fit 64 bits
    keeps no sums: totals then add up its rollups."""
    ids = sorted(set(session_ids))
    if not ids:
        return
    s, r = _sessions.c, _rollups.c
    found = {
        row.session_id: row
        for row in connection.execute(
            select(
                r.session_id,
                func.sum(_busy_samples()).label("samples"),
                func.sum(r.busy_ms).label("busy"),
                func.sum(r.energy_mj).label("energy"),
                func.min(r.minute).label("first"),
                func.max(r.minute).label("last"),
            )
            .where(r.session_id.in_(ids))
            .group_by(r.session_id)
        )
    }
    values = []
    for session_id, price in connection.execute(
        select(s.id, s.energy_price_per_kwh).where(s.id.in_(ids), s.ended_at.is_not(None))
    ):
        row = found.get(session_id)
        value = {"row_id": session_id, "s": 0, "b": 0, "e": None, "u": 0, "f": None, "l": None}
        if row is not None:
            energy = None if row.energy is None else int(row.energy)
            units = 0 if energy is None else energy_units(energy, price)
            value.update(s=int(row.samples), b=int(row.busy), e=energy, u=units)
            value.update(f=row.first, l=row.last)
            if units > _BIGINT_MAX:
                value.update(s=None, b=None, e=None, u=None)
        values.append(value)
    if values:
        connection.execute(
            update(_sessions)
            .where(s.id == bindparam("row_id"))
            .values(
                rollup_samples=bindparam("s"),
                busy_ms=bindparam("b"),
                energy_mj=bindparam("e"),
                energy_units=bindparam("u"),
                rollups_from=bindparam("f"),
                rollups_until=bindparam("l"),
            ),
            values,
        )
