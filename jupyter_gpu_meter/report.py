"""Usage per user from ledger sessions: GPU-hours, charges, sessions. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .pricing import charge, gpu_seconds

_HOUR = Decimal(3600)


@dataclass(frozen=True)
class UserUsage:
    user: str
    sessions: int
    running: int
    gpu_hours: Decimal
    charges: Decimal
    currency: str


def usage_by_user(
    sessions: Iterable,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UserUsage]:
    """Totals per user and currency over the part of each session inside [since, until).

    Running sessions count up to `now`. Each session is charged at the price
    snapshot it started with, so a later price change never changes it.
    """
    totals: dict[tuple[str, str], list] = {}
    for session in sessions:
        start = max(session.started_at, since) if since else session.started_at
        end = session.ended_at or now
        if until:
            end = min(end, until)
        if end <= start:
            continue
        key = (session.user, session.price.currency)
        entry = totals.setdefault(key, [0, 0, Decimal(0), Decimal(0)])
        entry[0] += 1
        entry[1] += session.ended_at is None
        entry[2] += gpu_seconds(session.price, start, end) / _HOUR
        entry[3] += charge(session.price, start, end)
    return [
        UserUsage(user, count, running, hours, money, currency)
        for (user, currency), (count, running, hours, money) in sorted(totals.items())
    ]
