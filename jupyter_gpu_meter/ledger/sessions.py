"""Sessions and their totals: one row per server run, from its start to its stop."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Integer, String, and_, false, func, or_, select, text, update
from sqlalchemy.exc import OperationalError

from ..pricing import PriceSnapshot, session_sums
from .efficiency import refresh_sums
from .engine import Database, aware, checked_text
from .models import SessionModel
from .records import SessionRecord, UsageSum
from .types import UTCDateTime

_sessions = SessionModel.__table__

#: the end reason of a session the hub's meter asked to stop: "stopped: <its stop_reason>"
#: (the words of ``sessions.REASON_STOPPED`` and the one-host meter's own close)
STOPPED_FOR = "stopped: {}"


def _clip(text: str) -> str:
    """`text` as a varchar(255) column holds it (a policy's reason can be long)."""
    return text if len(text) <= 255 else text[:254] + "…"


@functools.lru_cache(maxsize=4096)
def _price(*values) -> PriceSnapshot:
    """One checked snapshot per distinct price: the ledger holds few of them."""
    return PriceSnapshot(*values)


def _record(row) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        container_id=row.container_id,
        user=row.username,
        server=row.server,
        gpu_uuids=tuple(uuid for uuid in row.gpu_uuids.split(",") if uuid),
        gpu_model=row.gpu_model,
        profile=row.profile,
        price=_price(
            row.gpu_model,
            row.gpu_count,
            row.price_per_gpu_hour,
            row.cpu_price_per_hour,
            row.currency,
            row.billing_increment_s,
            row.minimum_charge,
            row.energy_price_per_kwh,
        ),
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        last_seen_at=row.last_seen_at,
        image=row.image,
        node=row.node,
        stop_reason=row.stop_reason,
    )


def _overlapping(user: str | None, since: datetime | None, until: datetime | None) -> list:
    """Conditions on sessions: `user`'s, overlapping [since, until)."""
    conditions = []
    if user is not None:
        conditions.append(_sessions.c.username == user)
    if since is not None:
        since = aware("since", since)
        conditions.append(or_(_sessions.c.ended_at.is_(None), _sessions.c.ended_at > since))
    if until is not None:
        conditions.append(_sessions.c.started_at < aware("until", until))
    return conditions


#: each user, the end of their latest closed session, how many of theirs run
_LAST_ACTIVE = text(
    """
    WITH RECURSIVE users(name) AS (
        SELECT min(username) FROM sessions
        UNION ALL
        SELECT (SELECT min(username) FROM sessions WHERE username > users.name)
        FROM users WHERE users.name IS NOT NULL
    )
    SELECT name,
        (SELECT max(ended_at) FROM sessions WHERE username = users.name) AS ended_at,
        (SELECT count(*) FROM sessions WHERE username = users.name AND ended_at IS NULL)
            AS running
    FROM users WHERE name IS NOT NULL
    """
).columns(name=String(), ended_at=UTCDateTime(), running=Integer())


def _overlaps(session: SessionRecord, since: datetime | None, until: datetime | None) -> bool:
    """Whether `session` may have a part inside [since, until) (a running one: until now)."""
    if until is not None and session.started_at >= until:
        return False
    return since is None or session.ended_at is None or session.ended_at > since


def _sum_in_python(rows) -> list[tuple]:
    """(user, currency, count, GPU-microseconds, charge units) from unsummed rows."""
    sums: dict[tuple[str, str], list[int]] = {}
    for user, currency, gpu_us, units in rows:
        entry = sums.setdefault((user, currency), [0, 0, 0])
        entry[0] += 1
        entry[1] += gpu_us
        entry[2] += units
    return [(*key, *entry) for key, entry in sorted(sums.items())]


class SessionStore:
    """Open, close and read sessions; their totals over a range, added up in SQL."""

    def __init__(self, db: Database):
        self.db = db

    def open_session(
        self,
        *,
        container_id: str,
        user: str,
        server: str,
        gpu_uuids: Iterable[str],
        gpu_model: str,
        profile: str,
        price: PriceSnapshot,
        started_at: datetime,
        image: str = "",
        node: str = "",
    ) -> bool:
        """Record that a container started; True if it is new.

        `image` is the display name of the image it runs (clipped to 255 characters);
        `node` the Docker engine's name it runs on ("" on one host).

        Idempotent on `container_id`: a second call returns False and changes
        nothing, even with different values.
        """
        started_at = aware("started_at", started_at)
        if isinstance(gpu_uuids, str):
            raise TypeError(f"gpu_uuids must be a list of UUIDs, not the string {gpu_uuids!r}")
        uuids = tuple(gpu_uuids)
        if not container_id:
            raise ValueError("container_id is empty")
        if any(not uuid or "," in uuid for uuid in uuids):
            raise ValueError(f"GPU UUIDs {uuids!r}: each must be non-empty, without commas")
        if (price.gpus, price.gpu_model) != (len(uuids), gpu_model):
            raise ValueError(
                f"price snapshot for {price.gpus} x {price.gpu_model!r} does not match the "
                f"session's {len(uuids)} x {gpu_model!r}: take it with "
                "Pricing.snapshot(gpu_model, len(gpu_uuids))"
            )
        statement = (
            self.db.insert(_sessions)
            .values(
                container_id=container_id,
                username=user,
                server=server,
                gpu_uuids=",".join(uuids),
                gpu_count=len(uuids),
                gpu_model=gpu_model,
                profile=profile,
                image=image if len(image) <= 255 else image[:254] + "…",
                node=checked_text("node", node),
                price_per_gpu_hour=price.price_per_gpu_hour,
                cpu_price_per_hour=price.cpu_price_per_hour,
                currency=price.currency,
                billing_increment_s=price.billing_increment_s,
                minimum_charge=price.minimum_charge,
                energy_price_per_kwh=price.energy_price_per_kwh,
                started_at=started_at,
                last_seen_at=started_at,
            )
            .on_conflict_do_nothing(index_elements=["container_id"])
            .inline()  # no RETURNING of the new id: rowcount says whether a row was added
        )
        with self.db.write() as connection:
            result = connection.execute(statement, execution_options={"preserve_rowcount": True})
            return result.rowcount == 1

    def close_session(self, container_id: str, *, ended_at: datetime, reason: str) -> bool:
        """Record that a container stopped; True if it closed an open session.

        Unknown or already closed sessions are left alone (False). An end
        before the start is taken as the start: a session never lasts < 0 s.
        The session's GPU time and charge are stored with its end, for totals.
        A session the hub's meter asked to stop (:meth:`set_stop_reason`, cluster
        mode) ends "stopped: <that reason>" instead of `reason`, as on one host.
        """
        ended_at = aware("ended_at", ended_at)
        is_open = (_sessions.c.container_id == container_id, _sessions.c.ended_at.is_(None))
        with self.db.write() as connection:
            row = connection.execute(select(_sessions).where(*is_open)).first()
            if row is None:
                return False
            session = _record(row)
            if session.stop_reason:
                reason = STOPPED_FOR.format(session.stop_reason)
            ended_at = max(ended_at, session.started_at)
            gpu_us, units = session_sums(session.price, session.started_at, ended_at)
            statement = (
                update(_sessions)
                .where(*is_open)
                .values(
                    ended_at=ended_at,
                    end_reason=_clip(reason),
                    gpu_microseconds=gpu_us,
                    charge_units=units,
                )
            )
            if connection.execute(statement).rowcount != 1:
                return False
            refresh_sums(connection, [session.id])  # its rollups, added up for totals
            return True

    def set_stop_reason(self, container_id: str, reason: str | None) -> bool:
        """Note why the hub's meter is asking the hub to stop this running server
        (None: the ask failed, forget it); True if an open session took it.

        Cluster mode: the node's agent, which sees the container die but not
        why, ends the session "stopped: <reason>" (:meth:`close_session`).
        """
        statement = (
            update(_sessions)
            .where(_sessions.c.container_id == container_id, _sessions.c.ended_at.is_(None))
            .values(stop_reason=None if reason is None else _clip(reason))
        )
        with self.db.write() as connection:
            return connection.execute(statement).rowcount == 1

    def touch_sessions(self, container_ids: Iterable[str], at: datetime) -> int:
        """Note that these containers were seen running at `at`; how many sessions moved on.

        Only open sessions, and only forward in time.
        """
        ids = sorted(set(container_ids))
        at = aware("at", at)
        if not ids:
            return 0
        statement = (
            update(_sessions)
            .where(
                _sessions.c.container_id.in_(ids),
                _sessions.c.ended_at.is_(None),
                _sessions.c.last_seen_at < at,
            )
            .values(last_seen_at=at)
        )
        with self.db.write() as connection:
            return connection.execute(statement).rowcount

    def get_session(self, container_id: str) -> SessionRecord | None:
        with self.db.read() as connection:
            row = connection.execute(
                select(_sessions).where(_sessions.c.container_id == container_id)
            ).first()
        return _record(row) if row else None

    def open_sessions(
        self, *, user: str | None = None, node: str | None = None
    ) -> list[SessionRecord]:
        """Sessions with no end yet (`user`'s only, `node`'s only, when given), oldest first."""
        conditions = [_sessions.c.ended_at.is_(None)]
        if user is not None:
            conditions.append(_sessions.c.username == user)
        if node is not None:
            conditions.append(_sessions.c.node == node)
        with self.db.read() as connection:
            return self._select_sessions(connection, conditions)

    def history(
        self,
        *,
        user: str,
        now: datetime,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int,
        offset: int = 0,
    ) -> tuple[int, list[SessionRecord]]:
        """(how many, one page) of `user`'s sessions with a part inside [since, until),
        newest first; running sessions last until `now`, sessions without duration
        are left out."""
        c = _sessions.c
        closed = [c.ended_at.is_not(None), c.ended_at > c.started_at]
        running = [c.ended_at.is_(None), c.started_at < aware("now", now)]
        if since is not None:
            since = aware("since", since)
            closed.append(c.ended_at > since)
            if since >= now:
                running.append(false())
        if until is not None:
            until = aware("until", until)
            closed.append(c.started_at < until)
            running.append(c.started_at < until)
        where = (c.username == user, or_(and_(*closed), and_(*running)))
        page = (
            select(_sessions)
            .where(*where)
            .order_by(c.started_at.desc(), c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self.db.snapshot() as connection:
            total = connection.execute(select(func.count()).where(*where)).scalar_one()
            return total, [_record(row) for row in connection.execute(page)]

    def sessions(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[SessionRecord]:
        """Sessions that overlap [since, until), running ones included, oldest first."""
        with self.db.read() as connection:
            return self._select_sessions(connection, _overlapping(user, since, until))

    def usage_sums(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> tuple[list[UsageSum], list[SessionRecord]]:
        """Usage over [since, until), split so the database adds up what it can.

        Returns (sums, sessions): the closed sessions wholly inside the range,
        added up per user and currency by the database; and every other
        session that overlaps the range (running, crossing one of its edges,
        or without stored sums), oldest first. Together they are what
        :func:`jupyter_gpu_meter.usage.usage_by_user` totals, with ``sums=``.
        """
        c = _sessions.c
        since = None if since is None else aware("since", since)
        until = None if until is None else aware("until", until)
        mine = [] if user is None else [c.username == user]
        # closed, lasted, summed (charge_units and gpu_microseconds are null together)
        inside = [*mine, c.charge_units.is_not(None), c.ended_at > c.started_at]
        # the rest, in pieces that each have an index: running or unsummed, crossing an edge
        pieces = [[*mine, c.charge_units.is_(None)]]
        for edge in (since, until):
            if edge is not None:
                pieces.append([*mine, c.ended_at > edge, c.started_at < edge])
        if since is not None:
            inside.append(c.started_at >= since)
        if until is not None:
            inside.append(c.ended_at <= until)
        keys = (c.currency, c.username)  # currency first: no index tempts SQLite's planner
        summed = select(
            c.username,
            c.currency,
            func.count(),
            func.sum(c.gpu_microseconds),
            func.sum(c.charge_units),
        ).where(*inside)
        found: dict[int, SessionRecord] = {}
        with self.db.snapshot() as connection:
            try:
                rows = connection.execute(summed.group_by(*keys)).all()
            except OperationalError as e:
                if "integer overflow" not in str(e):  # SQLite's SUM stops at 64 bits
                    raise
                connection.rollback()
                rows = _sum_in_python(
                    connection.execute(
                        select(c.username, c.currency, c.gpu_microseconds, c.charge_units).where(
                            *inside
                        )
                    )
                )
            for piece in pieces:
                for row in connection.execute(select(_sessions).where(*piece)):
                    found[row.id] = _record(row)
        sums = sorted(
            (UsageSum(u, cur, int(n), int(us), int(units)) for u, cur, n, us, units in rows),
            key=lambda part: (part.user, part.currency),
        )
        others = sorted(
            (s for s in found.values() if _overlaps(s, since, until)),
            key=lambda s: (s.started_at, s.id),
        )
        return sums, others

    def last_active(self, now: datetime) -> dict[str, datetime]:
        """user -> the end of their latest session, `now` while one of theirs runs.

        One index seek per user (a loose index scan over (username, ended_at)),
        not a pass over every session: 11 ms instead of 190 ms for 1,000 users
        with a million sessions on SQLite.
        """
        with self.db.read() as connection:
            rows = connection.execute(_LAST_ACTIVE).all()
        return {
            user: max(filter(None, (ended, now if running else None)))
            for user, ended, running in rows
        }

    def _select_sessions(self, connection, conditions) -> list[SessionRecord]:
        # sorted here, not in SQL: an ORDER BY started_at makes SQLite walk a user's
        # every session in start order instead of searching the index on their end
        records = [_record(row) for row in connection.execute(select(_sessions).where(*conditions))]
        records.sort(key=lambda session: (session.started_at, session.id))
        return records
