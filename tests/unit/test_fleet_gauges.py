"""Per-replica gauges: what a scrape of ``FleetGauges`` holds for a real plan and view,
and that a replica or endpoint gone from them is gone from the next scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from controlplane.decide import EnvoyNode, decide
from controlplane.fleet.model import GpuStats, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import Plan
from controlplane.runtime.fleet_gauges import FleetGauges
from tests.fleetgen import fleet, replica

NODE = EnvoyNode(role="edge", region="us", zone="us-a")
NOW = 50.0


def scrape(view: dict[str, ObservedReplica], plans: dict[str, Plan]) -> CollectorRegistry:
    registry = CollectorRegistry()
    FleetGauges(registry, lambda: view, lambda: plans)
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_endpoint_weight_health_and_priority_per_group_follow_the_plan() -> None:
    view = fleet(
        replica("n1/r1", waiting=0, port=8001),
        replica("n2/r1", waiting=30, kv=0.9, port=8002),
        replica("n3/r1", region="eu", zone="eu-a", port=8003),
    )
    plan = decide(view, Intent(), NODE, NOW)
    reg = scrape(view, {"edge-us": plan})
    cluster = next(c for c in plan.clusters if c.name == "llama@v1")
    assert len(cluster.endpoints) == 3
    for e in cluster.endpoints:
        labels = {
            "group": "edge-us",
            "cluster": "llama@v1",
            "model": "llama",
            "version": "v1",
            "replica": e.replica_id,
            "region": e.region,
            "zone": e.zone,
        }
        assert value(reg, "aixds_endpoint_weight", **labels) == e.weight
        assert value(reg, "aixds_endpoint_priority", **labels) == e.priority
        assert value(reg, "aixds_endpoint_health", **labels, health=e.health.value) == 1
    weights = {e.replica_id: e.weight for e in cluster.endpoints}
    assert weights["n1/r1"] > weights["n2/r1"]  # the loaded replica weighs less
    eu = next(e for e in cluster.endpoints if e.replica_id == "n3/r1")
    assert eu.priority == 1


def test_replica_load_and_gpu_state_with_a_shared_gpu_reported_once() -> None:
    gpu = GpuStats(
        index=0,
        uuid="GPU-1",
        util_gpu=0.75,
        mem_used_bytes=30 << 30,
        mem_total_bytes=80 << 30,
        temperature_c=71.0,
        power_w=350.0,
        throttled=True,
    )
    bad = GpuStats(index=1, uuid="GPU-2", faulty=True, fault_reason="xid 79")
    view = fleet(
        replica("n1/a", waiting=4, running=7, kv=0.5, speed=1.5, gpus=(gpu,), draining=True),
        replica("n1/b", gpus=(gpu, bad), port=8001),
    )
    reg = scrape(view, {})
    rep = {"replica": "n1/a", "node": "n1", "region": "us", "zone": "us-a"}
    assert value(reg, "aixds_replica_queue_waiting", **rep) == 4
    assert value(reg, "aixds_replica_requests_running", **rep) == 7
    assert value(reg, "aixds_replica_kv_cache_usage_ratio", **rep) == 0.5
    assert value(reg, "aixds_replica_speed", **rep) == 1.5
    assert value(reg, "aixds_replica_draining", **rep) == 1
    assert value(reg, "aixds_replica_draining", **{**rep, "replica": "n1/b"}) == 0
    g0 = {"node": "n1", "region": "us", "zone": "us-a", "gpu": "0", "uuid": "GPU-1"}
    assert value(reg, "aixds_gpu_utilization_ratio", **g0) == 0.75
    assert value(reg, "aixds_gpu_memory_used_bytes", **g0) == 30 << 30
    assert value(reg, "aixds_gpu_memory_total_bytes", **g0) == 80 << 30
    assert value(reg, "aixds_gpu_throttled", **g0) == 1
    assert value(reg, "aixds_gpu_faulty", **{**g0, "gpu": "1", "uuid": "GPU-2"}) == 1
    text = generate_latest(reg).decode()
    assert text.count('aixds_gpu_temperature_celsius{gpu="0"') == 1


def test_a_replica_gone_from_the_view_is_gone_from_the_next_scrape() -> None:
    view = fleet(replica("n1/r1"), replica("n2/r1", port=8001))
    plans = {"edge-us": decide(view, Intent(), NODE, NOW)}
    reg = scrape(view, plans)
    assert "n2/r1" in generate_latest(reg).decode()
    del view["n2/r1"]
    plans["edge-us"] = decide(view, Intent(), NODE, NOW)
    assert "n2/r1" not in generate_latest(reg).decode()
    assert "n1/r1" in generate_latest(reg).decode()


def test_an_empty_fleet_still_exports_every_family() -> None:
    text = generate_latest(scrape({}, {})).decode()
    for name in ("aixds_endpoint_weight", "aixds_replica_queue_waiting", "aixds_gpu_faulty"):
        assert f"# TYPE {name} gauge" in text
