"""What the spawn form shows: prices per profile and per GPU model. Pure.

Plain data in (profiles, GPU models, a :class:`~jupyter_gpu_meter.pricing.Pricing`),
finished words out; the money words come from the usage core.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from .usage.money import format_money


def format_rate(amount: Decimal, currency: str, per: str = "hour") -> str:
    """A price for people: ``2.49 USD/hour``, ``0.0125 USD/hour``; ``no charge`` for 0.

    At least the currency's minor unit of places, more only where the price has them.
    """
    if not Decimal(amount):
        return "no charge"
    return f"{format_money(amount, currency, exact=True)}/{per}"


def spawn_prices(profiles: Sequence, models: Sequence[str], pricing) -> dict:
    """What the spawn form shows: each profile's price per hour, each model's per GPU-hour.

    `pricing` is a :class:`~jupyter_gpu_meter.pricing.Pricing`; a profile without
    a model of its own costs what the one model present costs, or "from" the
    cheapest of them. Returns ``{"profiles": {slug: text}, "models": {model:
    text}, "cpu": text}``.
    """
    currency = pricing.currency

    def rate(model, gpus):
        return pricing.snapshot(model, gpus).hourly_rate

    texts = {}
    for profile in profiles:
        if not profile.gpus:
            texts[profile.slug] = format_rate(rate("", 0), currency)
            continue
        candidates = [profile.gpu_model] if profile.gpu_model else list(models)
        rates = sorted({rate(model, profile.gpus) for model in candidates}) or [
            rate("", profile.gpus)
        ]
        text = format_rate(rates[0], currency)
        texts[profile.slug] = text if len(rates) == 1 else "from " + text
    return {
        "profiles": texts,
        "models": {model: format_rate(rate(model, 1), currency, "GPU-hour") for model in models},
        "cpu": format_rate(rate("", 0), currency),
    }
