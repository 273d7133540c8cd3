"""How busy sessions' GPUs were and the energy they used, from the rollups, added up in SQL."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import case, func, or_, select

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
    """The rows' busy_source where they hold a sample (energy-only rows say nothing)."""
    r = _rollups.c
    return case((r.samples > 0, r.busy_source), else_=None)


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
        for session_id, samples, busy, memory, energy, low, high in rows:
            sampled = bool(samples)
            result[session_id] = SessionEfficiency(
                session_id=session_id,
                busy_gpu_ms=int(busy) if sampled else None,
                memory_max_bytes=int(memory) if sampled else None,
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

        Counts the rollup minutes that start inside the range, of the sessions
        that overlap it (found by the sessions' indexes, their rollups by the
        rollups' primary key). Each session's energy is priced at its own
        snapshot's ``energy_price_per_kwh`` (rounded per session, half up, to a
        :data:`~jupyter_gpu_meter.pricing.CHARGE_UNITS` part) and the parts are
        added up per user and currency. Users without a rollup in the range are
        not listed; by user, then currency.
        """
        s, r = _sessions.c, _rollups.c
        conditions = [] if user is None else [s.username == user]
        if since is not None:
            since = aware("since", since)
            conditions += [or_(s.ended_at.is_(None), s.ended_at > since), r.minute >= since]
        if until is not None:
            until = aware("until", until)
            conditions += [s.started_at < until, r.minute < until]
        statement = (
            select(
                s.username,
                s.currency,
                s.energy_price_per_kwh,
                func.sum(r.samples),
                func.sum(r.busy_ms),
                func.sum(r.energy_mj),
            )
            .select_from(_sessions.join(_rollups, r.session_id == s.id))
            .where(*conditions)
            .group_by(s.id, s.username, s.currency, s.energy_price_per_kwh)
        )
        sums: dict[tuple[str, str], list] = {}
        with self.db.read() as connection:
            for name, currency, price, samples, busy, energy in connection.execute(statement):
                entry = sums.setdefault((name, currency), [None, None, 0])
                if samples:
                    entry[0] = (entry[0] or 0) + int(busy)
                if energy is not None:
                    entry[1] = (entry[1] or 0) + int(energy)
                    entry[2] += energy_units(int(energy), price)
        return [
            EfficiencySum(
                user=name, busy_gpu_ms=busy, energy_mj=energy, energy_units=units, currency=currency
            )
            for (name, currency), (busy, energy, units) in sorted(sums.items())
        ]
