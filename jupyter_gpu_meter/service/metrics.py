"""Prometheus text at ``GET /services/gpu-meter/metrics``.

Protected like the hub's own ``/hub/metrics``: a hub token whose owner has
the scope ``read:metrics`` (hub admins have it; give a Prometheus service a
role with it). The series that name users (GPU-seconds and charges per user,
who holds each GPU) are only for a token that may see everyone's usage as
well (:data:`~jupyter_gpu_meter.scopes.READ_ALL_SCOPE`, or a hub
admin's): ``read:metrics`` alone gets the GPUs' and the meter's series.
Every value is read when scraped: the GPUs from the meter's last sample, the
per-user counters from the ledger (cached for
``c.UsagePages.metrics_cache_seconds``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .auth import Authenticated
from .cluster_views import cluster_now, cluster_readings
from .handlers import JSONHandler

#: the hub scope that allows scraping
METRICS_SCOPE = "read:metrics"
PREFIX = "jupyter_gpu_meter_"


def gpu_samples(tick, cluster=None) -> list[dict]:
    """Each GPU's readings for /metrics: from the last sample (one host: node ""), or in
    cluster mode from the nodes' inventories and latest rollups (`cluster`, a
    :class:`~jupyter_gpu_meter.ledger.node_views.ClusterRead`). Pure."""
    if cluster is not None:
        return [{**reading, "energy_mj": None} for reading in cluster_readings(cluster)]
    return [
        {
            "uuid": gpu.uuid,
            "index": gpu.index,
            "model": gpu.model,
            "node": "",
            "utilization": gpu.utilization,
            "memory_used_bytes": gpu.memory_used_bytes if gpu.healthy else None,
            "memory_total_bytes": gpu.memory_total_bytes,
            "power_watts": gpu.power_watts,
            "temperature_c": gpu.temperature_c,
            "energy_mj": gpu.energy_mj,
            "healthy": gpu.healthy,
        }
        for gpu in (tick.gpus if tick is not None else ())
    ]


def metric_families(tick, running: dict, health: dict, per_user, *, cluster=None) -> list:
    """The metric families of one scrape. Pure.

    `tick`: the last sample (or None), `running`: container id -> running
    container, `health`: the meter's health dict, `per_user`: (GPU-seconds by
    user, charges by (user, currency)[, storage]), all time, with storage a
    :class:`~jupyter_gpu_meter.service.reader.StorageMetrics`; None leaves out
    every family that names users (for a scraper that may not see them).
    `cluster` (cluster mode: a :class:`~jupyter_gpu_meter.ledger.node_views.ClusterRead`)
    replaces `tick` and `running` with the ledger's nodes and open sessions and
    adds the nodes' families. The GPU and session series carry a ``node`` label
    ("" on one host).
    """
    gpu_labels = ["uuid", "index", "model", "node"]

    def gauge(name, doc, labels=gpu_labels):
        return GaugeMetricFamily(PREFIX + name, doc, labels=labels)

    utilization = gauge("gpu_utilization_ratio", "GPU utilization (0-1) at the last sample.")
    memory_used = gauge("gpu_memory_used_bytes", "GPU memory in use at the last sample.")
    memory_total = gauge("gpu_memory_total_bytes", "GPU memory in all.")
    power = gauge("gpu_power_watts", "GPU power draw at the last sample.")
    temperature = gauge("gpu_temperature_celsius", "GPU temperature at the last sample.")
    energy = CounterMetricFamily(
        PREFIX + "gpu_energy_joules",
        "The GPU's energy counter at the last sample: joules since the driver loaded.",
        labels=gpu_labels,
    )
    healthy = gauge("gpu_healthy", "1 if the GPU answered the last sample, else 0.")
    allocated = gauge("gpu_allocated", "1 if a running server holds the GPU, else 0.")
    holder = gauge(
        "gpu_holder_info",
        "1 for each GPU a running server holds, labelled with who holds it.",
        labels=["uuid", "user", "server", "node"],
    )
    if cluster is not None:
        running = {session.container_id: session for session in cluster.sessions}
    holders = {uuid: container for container in running.values() for uuid in container.gpu_uuids}
    for gpu in gpu_samples(tick, cluster):
        labels = [gpu["uuid"], str(gpu["index"]), gpu["model"], gpu["node"]]
        if gpu["utilization"] is not None:
            utilization.add_metric(labels, gpu["utilization"] / 100)
        if gpu["memory_used_bytes"] is not None:
            memory_used.add_metric(labels, gpu["memory_used_bytes"])
        if gpu["memory_total_bytes"] is not None:
            memory_total.add_metric(labels, gpu["memory_total_bytes"])
        if gpu["power_watts"] is not None:
            power.add_metric(labels, gpu["power_watts"])
        if gpu["temperature_c"] is not None:
            temperature.add_metric(labels, gpu["temperature_c"])
        if gpu["energy_mj"] is not None:
            energy.add_metric(labels, gpu["energy_mj"] / 1000)
        healthy.add_metric(labels, 1 if gpu["healthy"] else 0)
        allocated.add_metric(labels, 1 if gpu["uuid"] in holders else 0)
    for uuid, container in sorted(holders.items()):
        node = getattr(container, "node", "")
        holder.add_metric([uuid, container.user, container.server, node], 1)

    seconds, charges, *rest = per_user if per_user is not None else ({}, {})
    storage, efficiency = rest[:1], rest[1:]
    gpu_seconds = CounterMetricFamily(
        PREFIX + "user_gpu_seconds",
        "GPU-seconds used per user, all time (running sessions up to the scrape).",
        labels=["user"],
    )
    for user, value in sorted(seconds.items()):
        gpu_seconds.add_metric([user], float(value))
    charged = CounterMetricFamily(
        PREFIX + "user_charges",
        "Charges per user in the currency of the label, all time, unrounded.",
        labels=["user", "currency"],
    )
    for (user, currency), value in sorted(charges.items()):
        charged.add_metric([user, currency], float(value))

    sessions = GaugeMetricFamily(
        PREFIX + "running_sessions", "Servers running now, per node.", labels=["node"]
    )
    per_node = {node.name: 0 for node in cluster.nodes} if cluster is not None else {"": 0}
    for container in running.values():
        node = getattr(container, "node", "")
        per_node[node] = per_node.get(node, 0) + 1
    for node, count in sorted(per_node.items()):
        sessions.add_metric([node], count)
    families = [utilization, memory_used, memory_total, power, temperature, energy, healthy]
    families.append(allocated)
    if per_user is not None:
        families += [holder, gpu_seconds, charged, *storage_families(*storage)]
        families += efficiency_families(*efficiency)
    families.append(sessions)
    tick_duration = GaugeMetricFamily(
        PREFIX + "sampler_tick_duration_seconds",
        "How long the last GPU sample took (absent while GPU sampling is off).",
    )
    last_tick = GaugeMetricFamily(
        PREFIX + "sampler_last_tick_timestamp_seconds",
        "When the last GPU sample was taken, seconds since the epoch.",
    )
    if tick is not None:
        tick_duration.add_metric([], tick.duration_s)
        last_tick.add_metric([], tick.at.timestamp())
    sampling = GaugeMetricFamily(PREFIX + "gpu_sampling", "1 if GPU sampling is on, else 0.")
    sampling.add_metric([], 1 if health.get("gpu_sampling") == "on" else 0)
    pending = GaugeMetricFamily(
        PREFIX + "ledger_pending_writes", "Ledger writes queued, not yet written."
    )
    pending.add_metric([], health.get("pending_writes", 0))
    families += [tick_duration, last_tick, sampling, pending, *failure_families(health)]
    return families + (node_families(cluster) if cluster is not None else [])


def node_families(cluster) -> list:
    """Cluster mode: each node's last heartbeat, and whether the hub declared it lost."""
    heartbeat = GaugeMetricFamily(
        PREFIX + "node_last_heartbeat_timestamp_seconds",
        "When the node's agent last reported, seconds since the epoch.",
        labels=["node"],
    )
    lost = GaugeMetricFamily(
        PREFIX + "node_lost",
        '1 if the hub declared the node lost (its sessions ended "node lost"), else 0.',
        labels=["node"],
    )
    for node in cluster.nodes:
        if node.last_heartbeat_at is not None:
            heartbeat.add_metric([node.name], node.last_heartbeat_at.timestamp())
        lost.add_metric([node.name], 1 if node.lost_at is not None else 0)
    return [heartbeat, lost]


def storage_families(storage=None) -> list:
    """Homes and snapshots: each volume's size at the last measurement, and per user
    the GB-hours and charges of storage, all time (they name users)."""
    size = GaugeMetricFamily(
        PREFIX + "volume_size_bytes",
        "Size of each home and snapshot volume at the last storage measurement (apparent).",
        labels=["volume", "user", "kind"],
    )
    gb_hours = CounterMetricFamily(
        PREFIX + "user_storage_gb_hours",
        "GB-hours of storage (homes and snapshots) per user, all time, up to the last measurement.",
        labels=["user"],
    )
    charged = CounterMetricFamily(
        PREFIX + "user_storage_charges",
        "Storage charges per user in the currency of the label, all time, unrounded.",
        labels=["user", "currency"],
    )
    measured = GaugeMetricFamily(
        PREFIX + "storage_last_measured_timestamp_seconds",
        "When the volumes were last measured, seconds since the epoch (absent before).",
    )
    if storage is not None:
        for period in storage.volumes:
            size.add_metric([period.volume, period.user, period.kind], period.size_bytes)
        hours: dict = {}
        for part in storage.sums:
            hours[part.user] = hours.get(part.user, 0) + part.gb_hours
            charged.add_metric([part.user, part.currency], float(part.charge))
        for user, value in sorted(hours.items()):
            gb_hours.add_metric([user], float(value))
        if storage.measured_at is not None:
            measured.add_metric([], storage.measured_at.timestamp())
    return [size, gb_hours, charged, measured]


def efficiency_families(rows=()) -> list:
    """Per user, all time: busy and idle GPU-seconds and the energy of their sessions'
    GPUs, and its charges (`rows`: :class:`~jupyter_gpu_meter.usage.UserUsage`)."""
    busy = CounterMetricFamily(
        PREFIX + "user_busy_gpu_seconds",
        "Busy GPU-seconds per user (SM activity or utilization x time), all time.",
        labels=["user"],
    )
    # a gauge: billed time grows to the second, busy time with each flush, so their
    # difference can dip, and a counter that goes down reads as a reset to Prometheus
    idle = GaugeMetricFamily(
        PREFIX + "user_idle_gpu_seconds",
        "GPU-seconds paid for and not busy per user, all time (absent without GPU samples).",
        labels=["user"],
    )
    energy = CounterMetricFamily(
        PREFIX + "user_energy_joules",
        "Energy of the GPUs of each user's sessions, all time (absent without energy readings).",
        labels=["user"],
    )
    charged = CounterMetricFamily(
        PREFIX + "user_energy_charges",
        "Energy charges per user in the currency of the label, all time, unrounded.",
        labels=["user", "currency"],
    )
    sums: dict[str, list] = {}
    for row in rows:
        entry = sums.setdefault(row.user, [None, None, None])
        for i, value in enumerate((row.busy_gpu_hours, row.idle_gpu_hours, row.energy_kwh)):
            if value is not None:
                entry[i] = (entry[i] or 0) + value
        if row.energy_charges:
            charged.add_metric([row.user, row.currency], float(row.energy_charges))
    for user, (busy_h, idle_h, kwh) in sorted(sums.items()):
        scaled = ((busy, busy_h, 3600), (idle, idle_h, 3600), (energy, kwh, 3_600_000))
        for family, value, scale in scaled:
            if value is not None:
                family.add_metric([user], float(value * scale))
    return [busy, idle, energy, charged]


def failure_families(health: dict) -> list:
    """What failed since the meter started, from its health dict: sessions the ledger
    refused to open (those servers are stopped), servers still unbilled, policy errors."""
    open_failures = CounterMetricFamily(
        PREFIX + "session_open_failures",
        "Sessions the ledger refused to open for good (their servers are stopped).",
    )
    open_failures.add_metric([], health.get("session_open_failures", 0))
    unbilled = GaugeMetricFamily(
        PREFIX + "unbilled_servers",
        "Servers running without a session in the ledger, being stopped.",
    )
    unbilled.add_metric([], health.get("unbilled_servers", 0))
    policy_errors = CounterMetricFamily(
        PREFIX + "policy_errors",
        "Policy steps that failed for one user or server (the others went on).",
    )
    policy_errors.add_metric([], health.get("policy_errors", 0))
    return [open_failures, unbilled, policy_errors]


def isolation_families(view) -> list:
    """Isolation breaches (:mod:`jupyter_gpu_meter.isolation`) from the meter's state
    (a :class:`~jupyter_gpu_meter.service.state.MeterView`): how many appeared since the
    meter started, and how many there are now. They name nobody."""
    appeared = CounterMetricFamily(
        PREFIX + "isolation_breaches",
        "Isolation breaches that appeared since the meter started: a process on a GPU "
        "its server does not own, or outside every server on a GPU a server holds.",
    )
    appeared.add_metric([], view.breaches_total)
    now = GaugeMetricFamily(
        PREFIX + "isolation_breaches",
        "Isolation breaches at the last GPU sample (processes on GPUs they should not use).",
    )
    now.add_metric([], len(view.breaches))
    return [appeared, now]


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


def exposition(families) -> bytes:
    """Prometheus text format of `families`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class MetricsHandler(Authenticated, JSONHandler):
    """``GET metrics``: needs a hub token with ``read:metrics`` (no cookie login); the
    per-user series need one that sees everyone's usage too."""

    @property
    def hub_scopes(self):
        return {METRICS_SCOPE}

    async def get(self):
        context = self.context
        reader = context.reader
        per_user = None
        if self.viewer.sees_everyone:
            per_user = await reader.call(reader.metrics_totals)
        live = context.live
        cluster = await cluster_now(context) if context.cluster else None
        families = metric_families(
            live.tick(), live.running(), live.health(), per_user, cluster=cluster
        )
        body = exposition([*families, *isolation_families(live.view())])
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)
