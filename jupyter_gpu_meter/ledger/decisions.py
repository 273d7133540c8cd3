"""Policy decisions: what a policy decided about a server, why, and what came of it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from .engine import LONG_TEXT, Database, aware, checked_text
from .models import DecisionModel
from .records import DecisionRecord

_decisions = DecisionModel.__table__


def _decision_record(row) -> DecisionRecord:
    return DecisionRecord(
        id=row.id,
        at=row.at,
        user=row.username,
        server=row.server,
        container_id=row.container_id,
        policy=row.policy,
        action=row.action,
        reason=row.reason,
        dry_run=bool(row.dry_run),
        outcome=row.outcome,
    )


class DecisionStore:
    """Record policy decisions (idempotent) and read them back, newest first."""

    def __init__(self, db: Database):
        self.db = db

    def record_decision(
        self,
        *,
        at: datetime,
        user: str,
        server: str,
        container_id: str,
        policy: str,
        action: str,
        reason: str,
        dry_run: bool,
        outcome: str,
    ) -> int:
        """Record what a policy decided about a server and what came of it; the row's id.

        Idempotent on (container_id, policy, at): writing the same decision
        again (a retried write) adds nothing and returns the first row's id.
        """
        at = aware("at", at)
        if not isinstance(dry_run, bool):
            raise TypeError(f"dry_run must be True or False, got {dry_run!r}")
        values = {
            "at": at,
            "username": checked_text("user", user, empty=False),
            "server": checked_text("server", server),
            "container_id": checked_text("container_id", container_id, most=128),
            "policy": checked_text("policy", policy, most=64, empty=False),
            "action": checked_text("action", action, most=64, empty=False),
            "reason": checked_text("reason", reason, most=LONG_TEXT),
            "dry_run": dry_run,
            "outcome": checked_text("outcome", outcome, most=LONG_TEXT),
        }
        statement = (
            self.db.insert(_decisions)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["container_id", "policy", "at"])
        )
        key = select(_decisions.c.id).where(
            _decisions.c.container_id == container_id,
            _decisions.c.policy == policy,
            _decisions.c.at == at,
        )
        with self.db.write() as connection:
            connection.execute(statement)
            return connection.execute(key).scalar_one()

    def decisions(
        self,
        *,
        user: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        policy: str | None = None,
    ) -> list[DecisionRecord]:
        """Recorded decisions, newest first: at most `limit`, at or after `since`
        (of `user`, of `policy`, when given)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit {limit!r} is not allowed: give a whole number >= 1")
        d = _decisions.c
        conditions = []
        if user is not None:
            conditions.append(d.username == user)
        if policy is not None:
            conditions.append(d.policy == policy)
        if since is not None:
            conditions.append(d.at >= aware("since", since))
        statement = select(_decisions).where(*conditions).order_by(d.at.desc(), d.id.desc())
        with self.db.read() as connection:
            rows = connection.execute(statement.limit(limit))
            return [_decision_record(row) for row in rows]
