"""Inline SVG charts for the usage pages, rendered on the server. Pure.

No script and nothing fetched: the SVG is part of the page. Every text in it
is escaped. The charts scale to their container (``viewBox``) and take the
page's text colour (``currentColor``), so they work in the hub's dark mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from markupsafe import Markup

from ..usage import decimal_string, format_day, format_percent, format_quantity


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _axis_label(value: float) -> str:
    """An axis value as exact as the scale's steps (1, 2, 2.5, 5 × 10^n) make it:
    ``0.0015``, ``1.25``, ``40``; never a row of zeros for a small scale."""
    return f"{value:.10f}".rstrip("0").rstrip(".")


def sparkline_svg(
    values: Sequence[float], *, width: int = 120, height: int = 24, maximum: float = 100.0
) -> Markup:
    """A utilization sparkline (0 to `maximum` %); empty markup without values."""
    if not values:
        return Markup("")
    pad = 1.5
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def y(value):
        value = min(max(value, 0.0), maximum)
        return height - pad - (height - 2 * pad) * value / maximum

    points = [(pad + i * step, y(v)) for i, v in enumerate(values)]
    if len(points) == 1:
        points.append((width - pad, points[0][1]))
    line = " ".join(f"{_number(x)},{_number(yy)}" for x, yy in points)
    area = f"{_number(pad)},{height - pad} {line} {_number(points[-1][0])},{height - pad}"
    low, high, mean = min(values), max(values), sum(values) / len(values)
    label = (
        f"GPU utilization per minute: mean {format_percent(mean)}, "
        f"from {format_percent(low)} to {format_percent(high)}"
    )
    return Markup(
        '<svg class="gpu-meter-sparkline" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'role="img" aria-label="{label}" preserveAspectRatio="none">'
        "<title>{label}</title>"
        '<polygon points="{area}" fill="currentColor" opacity="0.15"/>'
        '<polyline points="{line}" fill="none" stroke="currentColor" stroke-width="1.5" '
        'vector-effect="non-scaling-stroke"/></svg>'
    ).format(w=width, h=height, label=label, area=area, line=line)


def bar_chart_svg(
    points: Sequence[tuple[date, Decimal]],
    *,
    width: int = 600,
    height: int = 160,
    unit: str = "GPU-hours",
) -> Markup:
    """Bars per day (e.g. GPU-hours for the last 30 days), with a title per bar.

    Each bar's ``data-value`` is the day's value as the API gives it (6 places).
    """
    if not points:
        return Markup("")
    left, bottom, top = 36, 18, 8
    plot_w, plot_h = width - left - 2, height - bottom - top
    largest = max((float(v) for _, v in points), default=0.0)
    scale_max = _nice_ceiling(largest)
    slot = plot_w / len(points)
    bar_w = max(slot * 0.75, 1.0)
    parts = [
        Markup(
            '<svg class="gpu-meter-chart" viewBox="0 0 {w} {h}" role="img" '
            'aria-label="{label}" preserveAspectRatio="xMidYMid meet">'
            "<title>{label}</title>"
        ).format(
            w=width,
            h=height,
            label=f"{unit} per day, {points[0][0].isoformat()} to {points[-1][0].isoformat()}",
        )
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(
            Markup(
                '<line x1="{x1}" x2="{x2}" y1="{y}" y2="{y}" stroke="currentColor" '
                'opacity="0.2"/><text x="{tx}" y="{ty}" font-size="12" text-anchor="end" '
                'fill="currentColor">{value}</text>'
            ).format(
                x1=left,
                x2=width - 2,
                y=_number(y),
                tx=left - 4,
                ty=_number(y + 3),
                value=_axis_label(scale_max * fraction),
            )
        )
    for i, (day, value) in enumerate(points):
        bar_h = plot_h * float(value) / scale_max if scale_max else 0.0
        x = left + i * slot + (slot - bar_w) / 2
        parts.append(
            Markup(
                '<rect class="gpu-meter-bar" x="{x}" y="{y}" width="{bw}" height="{bh}" '
                'fill="currentColor" opacity="0.7" data-day="{day}" data-value="{raw}">'
                "<title>{day}: {value} {unit}</title></rect>"
            ).format(
                x=_number(x),
                y=_number(top + plot_h - bar_h),
                bw=_number(bar_w),
                bh=_number(bar_h),
                day=day.isoformat(),
                raw=decimal_string(value),  # the API's string for that day
                value=format_quantity(value),
                unit=unit,
            )
        )
    for i in (0, len(points) - 1):
        anchor = "start" if i == 0 else "end"
        x = left + i * slot + (slot / 2 if len(points) == 1 else (0 if i == 0 else slot))
        parts.append(
            Markup(
                '<text x="{x}" y="{y}" font-size="12" text-anchor="{a}" '
                'fill="currentColor">{day}</text>'
            ).format(x=_number(x), y=height - 4, a=anchor, day=format_day(points[i][0]))
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^n that is >= value (1 for 0)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude
