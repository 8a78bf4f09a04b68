"""Per-replica state as Prometheus gauges, read at scrape time from what ``aixds serve``
already holds: the EDS weight and health of every endpoint in every Envoy group's plan,
each replica's load and capacity, and each GPU's telemetry from the fleet view.

Nothing is stored: a scrape walks the view and the plans (``collect``), so a replica that
left the view, or an endpoint that left a plan, is gone from the next scrape instead of
lingering as a stale series. Series count: endpoints x Envoy groups for the weights,
replicas and GPUs for the rest (a 2,000-endpoint fleet with 10 groups: ~20,000 series).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.fleet.model import ObservedReplica
from controlplane.ir import Plan

ViewFn = Callable[[], Mapping[str, ObservedReplica]]
PlansFn = Callable[[], Mapping[str, Plan]]

_REPLICA = ["replica", "node", "region", "zone"]
_GPU = ["node", "region", "zone", "gpu", "uuid"]
_ENDPOINT = ["group", "cluster", "model", "version", "replica", "region", "zone"]


class FleetGauges(Collector):
    """Registers itself on ``registry``; ``view`` and ``plans`` are read on each scrape."""

    def __init__(self, registry: CollectorRegistry, view: ViewFn, plans: PlansFn) -> None:
        self._view = view
        self._plans = plans
        registry.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from endpoint_families(self._plans())
        replicas = [o for _, o in sorted(self._view().items())]
        yield from replica_families(replicas)
        yield from gpu_families(replicas)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Names only, so registering checks for clashes without walking the fleet.
        yield from endpoint_families({})
        yield from replica_families([])
        yield from gpu_families([])


def endpoint_families(plans: Mapping[str, Plan]) -> Iterator[GaugeMetricFamily]:
    weight = GaugeMetricFamily(
        "aixds_endpoint_weight",
        "EDS load-balancing weight the control plane gives an endpoint, per Envoy group",
        labels=_ENDPOINT,
    )
    health = GaugeMetricFamily(
        "aixds_endpoint_health",
        "EDS health of an endpoint per Envoy group: 1 for the health it has, one series "
        "per endpoint (HEALTHY, DEGRADED, DRAINING, UNHEALTHY)",
        labels=[*_ENDPOINT, "health"],
    )
    priority = GaugeMetricFamily(
        "aixds_endpoint_priority",
        "EDS priority of an endpoint per Envoy group (0 = the group's own region)",
        labels=_ENDPOINT,
    )
    for group, plan in sorted(plans.items()):
        for c in plan.clusters:
            for e in c.endpoints:
                labels = [group, c.name, c.model, c.version, e.replica_id, e.region, e.zone]
                weight.add_metric(labels, e.weight)
                health.add_metric([*labels, e.health.value], 1)
                priority.add_metric(labels, e.priority)
    yield from (weight, health, priority)


def replica_families(replicas: list[ObservedReplica]) -> Iterator[GaugeMetricFamily]:
    fams = {
        "queue": GaugeMetricFamily(
            "aixds_replica_queue_waiting",
            "Requests waiting in the model server's queue, as its agent published",
            labels=_REPLICA,
        ),
        "running": GaugeMetricFamily(
            "aixds_replica_requests_running",
            "Requests running on the model server, as its agent published",
            labels=_REPLICA,
        ),
        "kv": GaugeMetricFamily(
            "aixds_replica_kv_cache_usage_ratio",
            "KV-cache use of the model server (1 = full), as its agent published",
            labels=_REPLICA,
        ),
        "speed": GaugeMetricFamily(
            "aixds_replica_speed",
            "Measured decode speed relative to the fleet's reference (1 = reference)",
            labels=_REPLICA,
        ),
        "capacity": GaugeMetricFamily(
            "aixds_replica_capacity",
            "Best recent decode speed the agent holds for the replica (affinity weights)",
            labels=_REPLICA,
        ),
        "draining": GaugeMetricFamily(
            "aixds_replica_draining",
            "1 while the replica is draining",
            labels=_REPLICA,
        ),
        "sleeping": GaugeMetricFamily(
            "aixds_replica_sleeping",
            "1 while the model server sleeps (weights offloaded, wakes fast)",
            labels=_REPLICA,
        ),
        "age": GaugeMetricFamily(
            "aixds_replica_record_timestamp_seconds",
            "Unix time of the replica's last published record",
            labels=_REPLICA,
        ),
    }
    for o in replicas:
        r = o.record
        labels = [r.replica_id, r.node, r.region, r.zone]
        fams["queue"].add_metric(labels, r.load.queue_waiting)
        fams["running"].add_metric(labels, r.load.running)
        fams["kv"].add_metric(labels, r.load.kv_cache_usage)
        fams["speed"].add_metric(labels, r.speed)
        fams["capacity"].add_metric(labels, r.capacity)
        fams["draining"].add_metric(labels, float(r.draining))
        fams["sleeping"].add_metric(labels, float(r.sleeping))
        fams["age"].add_metric(labels, r.timestamp)
    yield from fams.values()


def gpu_families(replicas: list[ObservedReplica]) -> Iterator[GaugeMetricFamily]:
    """One series per (node, GPU): replicas of one node that share a GPU report it once."""
    fams = {
        "util": GaugeMetricFamily(
            "aixds_gpu_utilization_ratio", "GPU compute utilisation (0-1, NVML)", labels=_GPU
        ),
        "mem_used": GaugeMetricFamily(
            "aixds_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=_GPU
        ),
        "mem_total": GaugeMetricFamily(
            "aixds_gpu_memory_total_bytes", "GPU memory in all (NVML)", labels=_GPU
        ),
        "temp": GaugeMetricFamily(
            "aixds_gpu_temperature_celsius", "GPU temperature (NVML)", labels=_GPU
        ),
        "power": GaugeMetricFamily("aixds_gpu_power_watts", "GPU power draw (NVML)", labels=_GPU),
        "throttled": GaugeMetricFamily(
            "aixds_gpu_throttled",
            "1 while thermal or power clock-event reasons hold the GPU back (NVML; lowers the "
            "weight)",
            labels=_GPU,
        ),
        "faulty": GaugeMetricFamily(
            "aixds_gpu_faulty",
            "1 while the GPU has a fault (critical XID, new uncorrectable ECC error, "
            "remapped-row failure): its replicas are taken out of service",
            labels=_GPU,
        ),
    }
    seen: set[tuple[str, int]] = set()
    for o in replicas:
        r = o.record
        for g in r.gpus:
            if (r.node, g.index) in seen:
                continue
            seen.add((r.node, g.index))
            labels = [r.node, r.region, r.zone, str(g.index), g.uuid]
            fams["util"].add_metric(labels, g.util_gpu)
            fams["mem_used"].add_metric(labels, g.mem_used_bytes)
            fams["mem_total"].add_metric(labels, g.mem_total_bytes)
            fams["temp"].add_metric(labels, g.temperature_c)
            fams["power"].add_metric(labels, g.power_w)
            fams["throttled"].add_metric(labels, float(g.throttled))
            fams["faulty"].add_metric(labels, float(g.faulty))
    yield from fams.values()
