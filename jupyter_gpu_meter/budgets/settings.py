"""The budget settings both the spawner (before a start) and the meter (its policy) read."""

from __future__ import annotations

from traitlets import Float, Int, default
from traitlets.config import LoggingConfigurable


class Budgets(LoggingConfigurable):
    """How budgets are enforced: read by the spawner (before a start) and the meter (its
    budget policy), from the same ``jupyterhub_config.py``.

    The same settings as ``c.Policies.budget_grace``, ``budget_warn_fraction`` and
    ``budget_minimum_start``, which still apply when these are not set, with a
    warning naming the setting to use instead.
    """

    #: new name -> its deprecated name on ``c.Policies``
    DEPRECATED = {
        "grace": "budget_grace",
        "warn_fraction": "budget_warn_fraction",
        "minimum_start": "budget_minimum_start",
    }

    grace = Int(
        300,
        min=0,
        help="""
        Seconds between a user's budget running out and the meter stopping
        their servers that spend from it, e.g. 300 (5 minutes to save work).
        """,
    ).tag(config=True)

    warn_fraction = Float(
        0.8,
        min=0.0,
        max=1.0,
        help="Fraction of a budget at which the user is warned, e.g. 0.8 for 80 %.",
    ).tag(config=True)

    minimum_start = Int(
        3600,
        min=0,
        help="""
        Seconds a start must be paid for, e.g. 3600: the spawner refuses a
        start whose first ``minimum_start`` seconds, billed as the meter bills
        them (billing increment and minimum charge included), cost more than
        the user's budget has left. 0: at least the first billing increment.
        """,
    ).tag(config=True)

    @default("grace")
    def _grace_default(self):
        return self._deprecated("grace")

    @default("warn_fraction")
    def _warn_fraction_default(self):
        return self._deprecated("warn_fraction")

    @default("minimum_start")
    def _minimum_start_default(self):
        return self._deprecated("minimum_start")

    def _deprecated(self, name: str):
        """The value of the deprecated ``c.Policies`` name of `name` if set, else the default."""
        old = self.DEPRECATED[name]
        policies = self.config.get("Policies") or {}
        if old not in policies:
            return self.traits()[name].default_value
        self.log.warning(
            "c.Policies.%s is deprecated: use c.Budgets.%s (same meaning) instead", old, name
        )
        return policies[old]
