"""Budget administration over HTTP: ``api/budgets`` (see ``openapi.yaml``).

Reading budgets is for hub admins and holders of the read-all scope; changing
them needs the scope ``custom:gpu-meter:budgets`` in the caller's token (hub
admins get it through ``setup_meter``; the admin flag alone is not enough).
Every change is recorded with who and when.
Users see their own balance in ``api/usage`` (``budget``).
"""

from __future__ import annotations

import json

from tornado import web

from .. import budgets, usage
from .api import APIHandler

#: URL pattern pieces: api/budgets/<scope>/<name>
TARGET = r"(user|group)/([^/]+)"


def budget_json(record) -> dict:
    return {
        "scope": record.scope,
        "name": record.name,
        "amount": str(record.amount),
        "unit": record.unit,
        "currency": record.currency,
        "period": record.period,
        "updated_at": usage.isoformat(record.updated_at),
        "updated_by": record.updated_by,
    }


def change_json(change) -> dict:
    return {
        "at": usage.isoformat(change.at),
        "by": change.by,
        "change": change.change,
        "amount": None if change.amount is None else str(change.amount),
        "unit": change.unit,
        "currency": change.currency,
        "period": change.period,
        "note": change.note,
    }


class BudgetAPIHandler(APIHandler):
    def body_json(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise web.HTTPError(400, 'send a JSON object, e.g. {"amount": "50"}')
        return data

    async def ledger(self, method, **kwargs):
        """A ledger call in the reader's threads; its ValueError is the caller's 400."""
        reader = self.context.reader
        try:
            return await reader.call(getattr(reader.ledger, method), **kwargs)
        except ValueError as e:
            raise web.HTTPError(400, "%s", str(e)) from None


class BudgetsHandler(BudgetAPIHandler):
    """``GET api/budgets``: every budget in force."""

    async def get(self):
        self.viewer.check_sees_everyone("the list of budgets")
        records = await self.ledger("budgets")
        self.write_json({"budgets": [budget_json(r) for r in records]})


class BudgetHandler(BudgetAPIHandler):
    """``PUT`` sets, ``DELETE`` removes the budget of ``api/budgets/<scope>/<name>``."""

    async def put(self, scope, name):
        self.viewer.check_change_budgets()
        data = self.body_json()
        allowed = {"amount", "unit", "period", "currency"}
        if set(data) - allowed or "amount" not in data:
            raise web.HTTPError(
                400,
                "give 'amount' and optionally 'unit', 'period', 'currency'; got %s",
                sorted(data),
            )
        await self.ledger(
            "set_budget",
            scope=scope,
            name=name,
            amount=str(data["amount"]),
            unit=data.get("unit", "money"),
            period=data.get("period", "month"),
            currency=budgets.budget_currency(
                data.get("unit", "money"), data.get("currency"), self.context.reader.currency
            ),
            by=self.viewer.name,
            at=self.context.reader.clock(),
        )
        record = await self.ledger("get_budget", scope=scope, name=name)
        self.write_json({"budget": budget_json(record)})

    async def delete(self, scope, name):
        self.viewer.check_change_budgets()
        removed = await self.ledger(
            "remove_budget",
            scope=scope,
            name=name,
            by=self.viewer.name,
            at=self.context.reader.clock(),
        )
        if not removed:
            raise web.HTTPError(404, "%s %s has no budget", scope, name)
        self.write_json({"removed": {"scope": scope, "name": name}})


class GrantsHandler(BudgetAPIHandler):
    """``POST api/budgets/<scope>/<name>/grants``: an extra amount for this period."""

    async def post(self, scope, name):
        self.viewer.check_change_budgets()
        data = self.body_json()
        if set(data) - {"amount", "note"} or "amount" not in data:
            raise web.HTTPError(400, "give 'amount' and optionally 'note'; got %s", sorted(data))
        change = await self.ledger(
            "grant_budget",
            scope=scope,
            name=name,
            amount=str(data["amount"]),
            note=str(data.get("note", "")),
            by=self.viewer.name,
            at=self.context.reader.clock(),
        )
        self.write_json({"grant": change_json(change)}, status=201)


class ChangesHandler(BudgetAPIHandler):
    """``GET api/budgets/<scope>/<name>/changes``: who changed it, when, how much."""

    async def get(self, scope, name):
        self.viewer.check_sees_everyone("budget history")
        changes = await self.ledger("budget_changes", scope=scope, name=name)
        self.write_json({"changes": [change_json(c) for c in changes]})


def budget_routes(prefix: str, args: dict) -> list:
    base = prefix + "api/budgets"
    return [
        (base, BudgetsHandler, args),
        (rf"{base}/{TARGET}/grants", GrantsHandler, args),
        (rf"{base}/{TARGET}/changes", ChangesHandler, args),
        (rf"{base}/{TARGET}", BudgetHandler, args),
    ]
