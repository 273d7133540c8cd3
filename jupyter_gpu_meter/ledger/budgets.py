"""Budgets and every change to them; where a user stands against theirs (the one place
that reads what a budget status needs and composes it)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, delete, select

from .. import budgets as rules
from .engine import LONG_TEXT, Database, aware, checked_text
from .models import BudgetChangeModel, BudgetModel
from .records import BudgetChange, BudgetRecord
from .sessions import SessionStore
from .storage import StorageStore

_budgets_table = BudgetModel.__table__
_changes = BudgetChangeModel.__table__


def _budget_record(row) -> BudgetRecord:
    return BudgetRecord(
        scope=row.scope,
        name=row.name,
        amount=row.amount,
        unit=row.unit,
        currency=row.currency,
        period=row.period,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def _change_record(row) -> BudgetChange:
    return BudgetChange(
        id=row.id,
        at=row.at,
        by=row.changed_by,
        scope=row.scope,
        name=row.name,
        change=row.change,
        amount=row.amount,
        unit=row.unit,
        currency=row.currency,
        period=row.period,
        note=row.note,
    )


class BudgetStore:
    """Set, grant, remove and read budgets (every change recorded); budget status.

    Status reads the user's sessions, storage and energy of the budget's period
    through the `sessions`, `storage` and `efficiency` stores (without an
    `efficiency` store, energy counts nothing).
    """

    def __init__(
        self, db: Database, sessions: SessionStore, storage: StorageStore, efficiency=None
    ):
        self.db = db
        self._sessions = sessions
        self._storage = storage
        self._efficiency = efficiency

    def user_budget_status(
        self, user: str, groups: Iterable[str], now: datetime
    ) -> rules.BudgetStatus | None:
        """The budget that applies to `user` (own, else their groups') and how much is left.

        None when no budget applies. Reads only this period's sessions.
        """
        budget = rules.effective_budget(user, groups, self.budgets())
        if budget is None:
            return None
        return self.budget_status(budget, user=user, now=now)

    def budget_status(
        self, budget: rules.Budget, *, user: str, now: datetime
    ) -> rules.BudgetStatus:
        """Where `user` stands against `budget` at `now`.

        Reads the grants, `user`'s sessions, storage and energy of the budget's
        current period, and composes them with
        :func:`jupyter_gpu_meter.budgets.budget_status`: the one place that
        does, for the meter's pages and policies, the spawner and ``budget show``.
        """
        since = rules.period_start(budget.period, now)
        return rules.budget_status(
            budget,
            self.budget_changes(),
            self._sessions.sessions(user=user, since=since),
            now=now,
            user=user,
            storage=self._storage.storage_sums(user=user, since=since, until=now),
            energy=self._energy(user, since, now),
        )

    def _energy(self, user: str, since: datetime, now: datetime) -> list:
        """`user`'s energy charges over [since, now) (:class:`~.records.EfficiencySum`)."""
        if self._efficiency is None:
            return []
        return self._efficiency.efficiency_by_user(user=user, since=since, until=now)

    def set_budget(
        self,
        *,
        scope: str,
        name: str,
        amount,
        unit: str,
        period: str,
        currency: str | None = None,
        by: str,
        at: datetime,
    ) -> bool:
        """Set the budget of a user or of each member of a group; True if it changed.

        `amount` per `period` ("month" or "rolling:<days>") in `unit`
        ("money", with an ISO 4217 `currency`, or "gpu-hours"). Replaces the
        budget (scope, name) had; the change is recorded with `by` and `at`.
        Setting the same values again changes and records nothing (False).
        Grants made earlier in the period still count.
        """
        scope = rules.parse_scope(scope)
        name = rules.parse_name(name, scope)
        amount = rules.parse_amount(amount)
        unit = rules.parse_unit(unit)
        period = rules.parse_period(period)
        currency = rules.parse_currency_for(unit, currency)
        by = checked_text("by", by, empty=False)
        at = aware("at", at)
        values = {"amount": amount, "unit": unit, "currency": currency, "period": period}
        with self.db.write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is not None and all(
                getattr(current, key) == value for key, value in values.items()
            ):
                return False
            # an upsert: a concurrent first set of the same budget is a change, not an error
            statement = self.db.insert(_budgets_table).values(
                scope=scope, name=name, updated_at=at, updated_by=by, **values
            )
            statement = statement.on_conflict_do_update(
                index_elements=["scope", "name"],
                set_={
                    key: statement.excluded[key] for key in (*values, "updated_at", "updated_by")
                },
            )
            connection.execute(statement)
            self._record_change(connection, at, by, scope, name, rules.SET, note="", **values)
        return True

    def grant_budget(
        self,
        *,
        scope: str,
        name: str,
        amount,
        by: str,
        at: datetime,
        note: str = "",
        unit: str | None = None,
        currency: str | None = None,
    ) -> BudgetChange:
        """Add `amount` to a budget for the current period only; the recorded change.

        The grant is in the unit (and currency) of (scope, name)'s budget. A
        user without a budget of their own may still get a grant on top of
        their group's budget: then give its `unit` (and `currency`). Grants
        add up; each is recorded with `by`, `at` and `note`.
        """
        scope = rules.parse_scope(scope)
        name = rules.parse_name(name, scope)
        amount = rules.parse_amount(amount, "grant amount", positive=True)
        by = checked_text("by", by, empty=False)
        note = checked_text("note", note, most=LONG_TEXT)
        at = aware("at", at)
        with self.db.write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is not None:
                other_unit = unit is not None and rules.parse_unit(unit) != current.unit
                other_currency = currency is not None and str(currency).strip().upper() != (
                    current.currency or ""
                )
                if other_unit or other_currency:
                    raise ValueError(
                        f"{scope} {name!r} has a budget in "
                        f"{rules.unit_label(current.unit, current.currency)}: a grant is in "
                        "the same unit; leave unit and currency out"
                    )
                unit, currency, period = current.unit, current.currency, current.period
            elif scope == rules.GROUP:
                raise ValueError(f"group {name!r} has no budget to add to: set one first")
            elif unit is None:
                raise ValueError(
                    f"user {name!r} has no budget of their own: set one first, or give the "
                    "unit (and currency) of the group budget the grant adds to, e.g. "
                    "unit='money', currency='USD'"
                )
            else:
                unit = rules.parse_unit(unit)
                currency = rules.parse_currency_for(unit, currency)
                period = None
            change_id = self._record_change(
                connection,
                at,
                by,
                scope,
                name,
                rules.GRANT,
                amount=amount,
                unit=unit,
                currency=currency,
                period=period,
                note=note,
            )
            row = connection.execute(select(_changes).where(_changes.c.id == change_id)).one()
        return _change_record(row)

    def remove_budget(self, *, scope: str, name: str, by: str, at: datetime) -> bool:
        """Remove the budget of (scope, name); True if there was one.

        Recorded as a change (with the amount removed). Grants made before it
        no longer count, even if a budget is set again in the same period.
        """
        scope = rules.parse_scope(scope)
        name = rules.parse_name(name, scope)
        by = checked_text("by", by, empty=False)
        at = aware("at", at)
        with self.db.write() as connection:
            current = self._budget_row(connection, scope, name)
            if current is None:
                return False
            connection.execute(delete(_budgets_table).where(_budgets_table.c.id == current.id))
            self._record_change(
                connection,
                at,
                by,
                scope,
                name,
                rules.REMOVE,
                amount=current.amount,
                unit=current.unit,
                currency=current.currency,
                period=current.period,
                note="",
            )
        return True

    def budgets(self) -> list[BudgetRecord]:
        """Every budget in force, users' then groups', by name."""
        b = _budgets_table.c
        statement = select(_budgets_table).order_by(case((b.scope == "user", 0), else_=1), b.name)
        with self.db.read() as connection:
            return [_budget_record(row) for row in connection.execute(statement)]

    def get_budget(self, scope: str, name: str) -> BudgetRecord | None:
        """The budget of a user or group, None if it has none."""
        scope = rules.parse_scope(scope)
        with self.db.read() as connection:
            row = self._budget_row(connection, scope, name, lock=False)
        return _budget_record(row) if row is not None else None

    def budget_changes(
        self, *, scope: str | None = None, name: str | None = None
    ) -> list[BudgetChange]:
        """Recorded budget changes, oldest first; all, or those of a scope and name."""
        conditions = []
        if scope is not None:
            conditions.append(_changes.c.scope == rules.parse_scope(scope))
        if name is not None:
            conditions.append(_changes.c.name == name)
        statement = select(_changes).where(*conditions).order_by(_changes.c.at, _changes.c.id)
        with self.db.read() as connection:
            return [_change_record(row) for row in connection.execute(statement)]

    @staticmethod
    def _budget_row(connection, scope: str, name: str, *, lock: bool = True):
        b = _budgets_table.c
        statement = select(_budgets_table).where(b.scope == scope, b.name == name)
        if lock:  # in a write: PostgreSQL holds the row until the change is recorded
            statement = statement.with_for_update()
        return connection.execute(statement).first()

    @staticmethod
    def _record_change(
        connection,
        at: datetime,
        by: str,
        scope: str,
        name: str,
        change: str,
        *,
        amount: Decimal | None,
        unit: str | None,
        currency: str | None,
        period: str | None,
        note: str,
    ) -> int:
        result = connection.execute(
            _changes.insert()
            .values(
                at=at,
                changed_by=by,
                scope=scope,
                name=name,
                change=change,
                amount=amount,
                unit=unit,
                currency=currency,
                period=period,
                note=note,
            )
            .returning(_changes.c.id)
        )
        return result.scalar_one()
