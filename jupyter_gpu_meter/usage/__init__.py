"""The usage core: clip, totals, money, durations, dates — one of each. Pure, no I/O.

Plain data in (the ledger's records, a `now`), plain data and finished words
out. Pages, the JSON API, the CSV, ``jupyter-gpu-meter report`` and ``budget``,
policies and budgets all count and write numbers through here, so they agree
to the last digit:

- :mod:`.money`: :func:`parse_money`, :func:`round_money`, :func:`format_money`
  (the currency's minor unit: ``12.35 USD``, ``1,235 JPY``), exact
  :func:`decimal_string`;
- :mod:`.dates`: :func:`parse_time` (ISO 8601, dateutil), :func:`isoformat`,
  :func:`format_time`, :func:`format_day`, :func:`format_duration`, :func:`month_start`;
- :mod:`.totals`: :func:`clip`, :class:`Totals`, :func:`usage_by_user`;
- :mod:`.sessions`: one session's usage, GPU-hours per day;
- :mod:`.efficiency`: a session's busy share, idle GPU-time and energy,
  :func:`format_share`, :func:`format_energy`;
- :mod:`.export`: the CSV's invoice lines.

Reading query arguments lives with the API (:mod:`jupyter_gpu_meter.service.query`),
spawn-form prices with the spawn form (:mod:`jupyter_gpu_meter.spawn_form`).
"""

from .dates import (
    TIME_EXAMPLE,
    day_start,
    format_day,
    format_duration,
    format_time,
    isoformat,
    month_start,
    parse_time,
)
from .efficiency import (
    ENERGY_PLACES,
    Efficiency,
    format_energy,
    format_processes,
    format_share,
    processes_json,
    session_efficiency,
)
from .export import (
    EFFICIENCY_COLUMNS,
    EXPORT_COLUMNS,
    SESSION_LINE,
    STORAGE_LINE,
    export_row,
    export_rows,
    storage_row,
)
from .money import (
    MONEY_LIMIT,
    MONEY_PLACES,
    charges_list,
    decimal_string,
    format_amount,
    format_charges,
    format_money,
    format_quantity,
    format_rate,
    minor_unit,
    money,
    parse_money,
    round_money,
)
from .sessions import (
    DAILY_DAYS,
    SessionUsage,
    average_utilization,
    daily_gpu_hours,
    daily_start,
    format_percent,
    session_usage,
    utilization_series,
)
from .totals import (
    USER_SORT_KEYS,
    Totals,
    UserTotals,
    UserUsage,
    clip,
    sort_users,
    totals,
    totals_by_user,
    usage_by_user,
    user_table,
)

#: decimal places of GPU-hours and money in the API and exports
PLACES = MONEY_PLACES

__all__ = [
    "DAILY_DAYS",
    "EFFICIENCY_COLUMNS",
    "ENERGY_PLACES",
    "EXPORT_COLUMNS",
    "MONEY_LIMIT",
    "MONEY_PLACES",
    "PLACES",
    "SESSION_LINE",
    "STORAGE_LINE",
    "TIME_EXAMPLE",
    "USER_SORT_KEYS",
    "Efficiency",
    "SessionUsage",
    "Totals",
    "UserTotals",
    "UserUsage",
    "average_utilization",
    "charges_list",
    "clip",
    "daily_gpu_hours",
    "daily_start",
    "day_start",
    "decimal_string",
    "export_row",
    "export_rows",
    "format_amount",
    "format_charges",
    "format_day",
    "format_duration",
    "format_energy",
    "format_money",
    "format_percent",
    "format_processes",
    "format_quantity",
    "format_rate",
    "format_share",
    "format_time",
    "isoformat",
    "minor_unit",
    "money",
    "month_start",
    "parse_money",
    "parse_time",
    "processes_json",
    "round_money",
    "session_efficiency",
    "session_usage",
    "sort_users",
    "storage_row",
    "totals",
    "totals_by_user",
    "usage_by_user",
    "user_table",
    "utilization_series",
]
