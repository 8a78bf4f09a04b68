"""Session affinity in ``decide()``: a hash cluster per version with weights that hold still."""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import MappingProxyType

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from controlplane.api.affinity_cli import format_affinity
from controlplane.decide import EnvoyNode, decide
from controlplane.decide.affinity import BALANCE_FACTOR, capacity_weight
from controlplane.fleet.model import GpuStats, ModelState
from controlplane.fleet.store import MemoryRegistry
from controlplane.intent import Intent, IntentError, Rollout, intent_from_doc, intent_to_doc
from controlplane.ir import Health, LbPolicy, Plan, version_cluster
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from controlplane.runtime.reconcile import ReconcileMetrics, Reconciler
from controlplane.settings import ConfigError, load_fleet_config
from controlplane.xds.cache import SnapshotCache
from tests.fleetgen import fleet, replica
from tests.rollout_app import build

NODE = EnvoyNode(role="edge", region="us", zone="us-a")
NOW = 50.0


def cluster(plan: Plan, name: str) -> dict[str, tuple[int, Health]]:
    (c,) = [c for c in plan.clusters if c.name == name]
    return {e.replica_id: (e.weight, e.health) for e in c.endpoints}


def weights_of(plan: Plan, name: str) -> dict[str, int]:
    return {r: w for r, (w, _) in cluster(plan, name).items()}


def test_capacity_weights_follow_capacity_on_sqrt2_rungs() -> None:
    assert [capacity_weight(s) for s in (2.0, 1.5, 1.0, 0.6, 0.35)] == [200, 141, 100, 71, 35]
    # a value wandering inside one rung does not move the weight
    assert {capacity_weight(s) for s in (0.85, 0.9, 1.0, 1.1, 1.18)} == {100}
    assert capacity_weight(0.0) >= 1 and capacity_weight(float("inf")) >= 1


def test_every_version_gets_a_maglev_cluster_with_bounded_load_and_capacity_weights() -> None:
    f = fleet(replica("n1/a", speed=1.5), replica("n2/a", speed=0.6, port=8001))
    plan = decide(f, Intent(), NODE, NOW)
    (aff,) = [c for c in plan.clusters if c.name == "llama@v1#affinity"]
    assert aff.lb_policy is LbPolicy.MAGLEV and aff.hash_balance_factor == BALANCE_FACTOR
    assert cluster(plan, "llama@v1#affinity") == {
        "n1/a": (141, Health.HEALTHY),
        "n2/a": (71, Health.HEALTHY),
    }
    (route,) = plan.route_configs[0].models
    assert [(w.cluster, w.weight) for w in route.affinity_clusters] == [
        ("llama@v1#affinity", 10_000)
    ]
    assert route.session_key_header == "x-session-id"
    assert [w.cluster for w in route.clusters] == ["llama@v1"]  # sessionless: load-following
    assert plan.validate() == []


def test_load_noise_moves_load_weights_but_never_affinity_weights() -> None:
    """The churn bound: 300 rounds of random load, KV use, queues, batch slowdowns and
    throttling change the load-following weights again and again and the affinity weights
    not once (only shedding, below, changes a replica's health there)."""
    rng = random.Random(7)
    speeds = [1.5, 1.5, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6]
    load_changes = affinity_changes = 0
    last_load = last_aff = None
    for _ in range(300):
        reps = [
            replica(
                f"n{i}/a",
                port=8000 + i,
                speed=s * rng.choice([1.0, 0.8, 0.64]),  # per-sequence speed falls in a batch
                capacity=s,
                running=rng.uniform(0, 40),
                waiting=rng.choice([0, 0, 0, 1, 5]),
                kv=rng.uniform(0, 1),
                gpus=(GpuStats(index=0, throttled=rng.random() < 0.1),),
            )
            for i, s in enumerate(speeds)
        ]
        plan = decide(fleet(*reps), Intent(), NODE, NOW)
        load, aff = cluster(plan, "llama@v1"), weights_of(plan, "llama@v1#affinity")
        load_changes += last_load is not None and load != last_load
        affinity_changes += last_aff is not None and aff != last_aff
        last_load, last_aff = load, aff
    assert load_changes > 100
    assert affinity_changes == 0


def test_a_replica_far_worse_than_its_peers_is_shed_and_only_that_one() -> None:
    """DEGRADED in the affinity cluster (out of the Maglev table while the others serve)
    when its speed relative to its capacity, cubed, is under the upper quartile /
    SHED_RATIO: a GPU that became 3x slower; not a saturated one (bounded load moves its
    overflow per request), a busy one, nor an older GPU generation."""
    reps = [
        replica("n0/a", port=8000, speed=0.33, capacity=1.0),  # slowed: 0.33^3 = 1/27
        replica("n1/a", port=8001, running=30, waiting=4, kv=0.9),  # saturated
        replica("n2/a", port=8002, speed=0.64, capacity=0.5),  # an older GPU
        replica("n3/a", port=8003, running=8),  # busy
        *(replica(f"n{i}/a", port=8000 + i) for i in range(4, 7)),
    ]
    aff = cluster(decide(fleet(*reps), Intent(), NODE, NOW), "llama@v1#affinity")
    assert {r for r, (_, h) in aff.items() if h is Health.DEGRADED} == {"n0/a"}
    assert aff["n0/a"][0] == 100  # its weight stays: when it recovers, its keys come back
    # the load-following cluster is unchanged by shedding: it only weights the slow one down
    load = cluster(decide(fleet(*reps), Intent(), NODE, NOW), "llama@v1")
    assert all(h is Health.HEALTHY for _, h in load.values())
    # a lone replica, or one of two, is never shed below nothing
    assert {
        h
        for _, h in cluster(
            decide(fleet(reps[0]), Intent(), NODE, NOW), "llama@v1#affinity"
        ).values()
    } == {Health.HEALTHY}


def test_a_replica_not_measured_yet_counts_as_fast_as_its_measured_peers() -> None:
    """The agent publishes speed 1.0 until it has measured the server; next to peers
    measured at 32 that default would weigh it ~30,000x less (cubed) and starve it of the
    requests that would measure it. It gets the peers' median speed and capacity instead."""
    peers = [replica(f"n{i}/a", port=8000 + i, speed=32.0) for i in range(1, 3)]
    new = replica("n0/a", port=8000, speed_measured=False)
    plan = decide(fleet(new, *peers), Intent(), NODE, NOW)
    assert len(set(weights_of(plan, "llama@v1").values())) == 1
    assert len(set(weights_of(plan, "llama@v1#affinity").values())) == 1
    # measured at 1.0, it is that slow: far less traffic, and far worse than its peers
    slow = replica("n0/a", port=8000, speed=1.0)
    plan = decide(fleet(slow, *peers), Intent(), NODE, NOW)
    load = weights_of(plan, "llama@v1")
    assert load["n0/a"] * 1000 < load["n1/a"]
    # with no measured peer, the defaults stand
    alone = decide(
        fleet(new, replica("n1/a", port=8001, speed_measured=False)), Intent(), NODE, NOW
    )
    assert weights_of(alone, "llama@v1")["n0/a"] == weights_of(alone, "llama@v1")["n1/a"]


def test_shedding_has_hysteresis_and_ignores_queues() -> None:
    """A replica measured 3x slower is shed. Measured 2x slower it would not be shed
    afresh, but once shed it stays shed until it is within RETURN_RATIO of its peers (so
    one hovering at the bound does not flap: CI saw shed and back 40 times in 90 s). A
    queue never sheds: it comes and goes with every burst (bench.sessions at 80 %: 516 of
    544 sheds were on a queue of 2)."""

    def plan(speed: float, shed_before: frozenset[tuple[str, str]] = frozenset()) -> Plan:
        slow = replica("n0/a", port=8000, speed=speed, capacity=1.0)
        peers = [replica(f"n{i}/a", port=8000 + i) for i in range(1, 6)]
        return decide(fleet(slow, *peers), Intent(), NODE, NOW, shed_before=shed_before)

    def degraded(p: Plan) -> set[str]:
        aff = cluster(p, "llama@v1#affinity")
        return {r for r, (_, h) in aff.items() if h is Health.DEGRADED}

    slowed = plan(0.33)
    assert degraded(slowed) == {"n0/a"}
    assert slowed.shed() == {("llama@v1#affinity", "n0/a")}
    assert degraded(plan(0.5)) == set()  # half speed, no memory: not shed...
    assert degraded(plan(0.5, slowed.shed())) == {"n0/a"}  # ...but once shed, it stays
    assert degraded(plan(0.8, slowed.shed())) == set()  # recovered: back
    # the memory is per cluster: another version's shed set does not hold this one
    assert degraded(plan(0.5, frozenset({("llama@v2#affinity", "n0/a")}))) == set()
    # saturated, whatever its queue and KV use: never shed (bounded load's job)
    queued = [replica("n0/a", port=8000, waiting=w, running=4, kv=0.95) for w in (2, 8, 50)]
    peers = [replica(f"n{i}/a", port=8000 + i) for i in range(1, 6)]
    for q in queued:
        assert degraded(decide(fleet(q, *peers), Intent(), NODE, NOW)) == set()


def test_a_replica_leaving_changes_only_its_own_entry() -> None:
    """Drained: DRAINING (out of the Maglev table, streams finish); GPU fault or gone:
    absent. Every other replica keeps its weight, so only the leaver's sessions move."""
    reps = [replica(f"n{i}/a", port=8000 + i, speed=1.0 + i / 10) for i in range(4)]
    base = cluster(decide(fleet(*reps), Intent(), NODE, NOW), "llama@v1#affinity")
    drained = cluster(
        decide(fleet(*reps), Intent(drained=frozenset({"n1/a"})), NODE, NOW), "llama@v1#affinity"
    )
    assert drained["n1/a"] == (base["n1/a"][0], Health.DRAINING)
    assert {k: v for k, v in drained.items() if k != "n1/a"} == {
        k: v for k, v in base.items() if k != "n1/a"
    }
    faulty = list(reps)
    faulty[2] = replica("n2/a", port=8002, speed=1.2, gpus=(GpuStats(index=0, faulty=True),))
    gone = cluster(decide(fleet(*faulty), Intent(), NODE, NOW), "llama@v1#affinity")
    assert gone == {k: v for k, v in base.items() if k != "n2/a"}


def test_canary_split_is_the_same_for_sessions_and_the_canary_never_loses_its_last_host() -> None:
    f = fleet(
        replica("n1/a", models=(("llama", "v1", ModelState.READY),)),
        replica("n2/a", port=8001, models=(("llama", "v2", ModelState.READY),)),
    )
    it = Intent(rollouts=MappingProxyType({"llama": Rollout("v1", "v2", 25.0)}))
    plan = decide(f, it, NODE, NOW)
    (route,) = plan.route_configs[0].models
    assert [(w.cluster, w.weight) for w in route.clusters] == [
        ("llama@v1", 7500),
        ("llama@v2", 2500),
    ]
    assert [(w.cluster, w.weight) for w in route.affinity_clusters] == [
        ("llama@v1#affinity", 7500),
        ("llama@v2#affinity", 2500),
    ]
    (canary,) = [c for c in plan.clusters if c.name == "llama@v2#affinity"]
    assert canary.outlier.always_eject_one_host is False


def test_affinity_off_per_model_from_api_or_fleet_yaml() -> None:
    f = fleet(
        replica("n1/a", models=(("llama", "v1", ModelState.READY), ("emb", "e1", ModelState.READY)))
    )

    def names(it: Intent) -> list[str]:
        return [c.name for c in decide(f, it, NODE, NOW).clusters]

    assert names(Intent()) == ["emb@e1", "emb@e1#affinity", "llama@v1", "llama@v1#affinity"]
    base_off = Intent(affinity_base=MappingProxyType({"emb": False}))
    assert names(base_off) == ["emb@e1", "llama@v1", "llama@v1#affinity"]
    # the API's setting (stored) wins over fleet.yaml's
    api_on = Intent(
        affinity=MappingProxyType({"emb": True}), affinity_base=MappingProxyType({"emb": False})
    )
    assert names(api_on) == ["emb@e1", "emb@e1#affinity", "llama@v1", "llama@v1#affinity"]
    all_off = Intent(affinity_default=False)
    assert names(all_off) == ["emb@e1", "llama@v1"]
    routes = decide(f, all_off, NODE, NOW).route_configs[0].models
    assert all(not r.affinity_clusters and not r.session_key_header for r in routes)


def test_intent_codec_keeps_affinity_and_refuses_non_booleans() -> None:
    it = Intent(affinity=MappingProxyType({"llama": False, "emb": True}))
    doc = intent_to_doc(it)
    assert doc["affinity"] == {"emb": True, "llama": False}
    assert dict(intent_from_doc(doc, 3).affinity) == {"emb": True, "llama": False}
    assert (
        dict(intent_from_doc({k: v for k, v in doc.items() if k != "affinity"}, 1).affinity) == {}
    )
    with pytest.raises(IntentError, match=r"affinity\.llama must be true or false"):
        intent_from_doc({**doc, "affinity": {"llama": "off"}}, 1)


def test_fleet_yaml_affinity(tmp_path: Path) -> None:
    p = tmp_path / "fleet.yaml"
    p.write_text("affinity:\n  default: false\n  models: {llama: true}\n")
    base = load_fleet_config(p).base_intent()
    assert base.affinity_on("llama") and not base.affinity_on("other")
    for bad in (
        "affinity: {default: maybe}\n",
        "affinity: {models: {llama: 1}}\n",
        "affinity: 3\n",
    ):
        p.write_text(bad)
        with pytest.raises(ConfigError, match="affinity"):
            load_fleet_config(p)


def test_load_reports_of_the_affinity_cluster_count_for_its_version() -> None:
    assert version_cluster("llama@v2#affinity") == "llama@v2" == version_cluster("llama@v2")


AUTH = {"authorization": "Bearer tok"}


def test_api_sets_lists_and_forgets_affinity_per_model() -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    doc = c.get("/v1/affinity").json()
    assert (doc["revision"], doc["default"], doc["session_header"]) == (0, True, "x-session-id")
    assert doc["models"] == [
        {"model": "llama", "enabled": True, "source": "default"},
        {"model": "qwen", "enabled": True, "source": "default"},
    ]
    r = c.put("/v1/affinity/qwen", json={"enabled": False}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["changed"] and r.json()["revision"] == 1
    assert {"model": "qwen", "enabled": False, "source": "api"} in r.json()["models"]
    again = c.put("/v1/affinity/qwen", json={"enabled": False, "revision": 1}, headers=AUTH)
    assert again.json()["changed"] is False
    r = c.delete("/v1/affinity/qwen?revision=1", headers=AUTH)
    assert r.status_code == 200, r.text
    assert {"model": "qwen", "enabled": True, "source": "default"} in r.json()["models"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error"),
    [
        ("PUT", "/v1/affinity/llama", {"enabled": False}, {}, 401, "unauthorized"),
        ("PUT", "/v1/affinity/llama", {"enabled": "no"}, AUTH, 422, None),
        ("PUT", "/v1/affinity/llama", {}, AUTH, 422, None),
        ("PUT", "/v1/affinity/llama", {"enabled": True, "x": 1}, AUTH, 422, None),
        ("PUT", "/v1/affinity/%20llama", {"enabled": False}, AUTH, 422, "bad_model"),
        ("PUT", "/v1/affinity/llama", {"enabled": False, "revision": 9}, AUTH, 409, None),
        ("DELETE", "/v1/affinity/llama", None, {}, 401, "unauthorized"),
    ],
)
def test_api_refuses_bad_affinity_writes(
    method: str, path: str, body: object, headers: dict[str, str], status: int, error: str | None
) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    r = c.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    if error is not None:
        assert r.json()["error"] == error
    assert c.get("/v1/affinity").json()["revision"] == 0  # nothing written


def test_cli_formats_the_affinity_view() -> None:
    doc = {
        "revision": 4,
        "session_header": "x-session-id",
        "default": True,
        "models": [{"model": "emb", "enabled": False, "source": "fleet.yaml"}],
    }
    assert format_affinity(doc).splitlines() == [
        "session affinity (intent revision 4; session key: the x-session-id header, else the"
        " body's user; default on):",
        "  emb: off (fleet.yaml)",
    ]


def test_the_reconciler_reports_shed_replicas(caplog: pytest.LogCaptureFixture) -> None:
    reg = CollectorRegistry()
    watcher = FleetWatcher(MemoryRegistry(time.time), FleetMetrics(reg), lambda: None)
    far = 1e12
    healthy = [replica(f"n{i}/a", port=8000 + i, expires_at=far) for i in range(1, 6)]
    slowed = replica("n0/a", port=8000, speed=0.3, capacity=1.0, expires_at=far)
    watcher.view = fleet(slowed, *healthy)
    watcher.synced_once = watcher.connected = True
    rec = Reconciler(watcher, Intent, SnapshotCache(), ReconcileMetrics(reg))
    rec.add_group("g", NODE)
    labels = {"group": "g", "cluster": "llama@v1#affinity"}
    with caplog.at_level("INFO"):
        rec.reconcile_once()
        assert reg.get_sample_value("aixds_affinity_shed_replicas", labels) == 1
        assert "affinity: n0/a shed from llama@v1#affinity" in caplog.text
        # better, but not yet within RETURN_RATIO of its peers: the reconciler remembers
        # its last plan, so the replica stays shed (a fresh decision would not shed it)
        better = replica("n0/a", port=8000, speed=0.5, capacity=1.0, expires_at=far)
        watcher.view = fleet(better, *healthy)
        rec.reconcile_once()
        assert reg.get_sample_value("aixds_affinity_shed_replicas", labels) == 1
        fresh = decide(fleet(better, *healthy), Intent(), NODE, time.time())
        assert fresh.shed() == frozenset()
        watcher.view = fleet(replica("n0/a", port=8000, expires_at=far), *healthy)
        rec.reconcile_once()
    assert reg.get_sample_value("aixds_affinity_shed_replicas", labels) == 0
    assert "affinity: n0/a back in llama@v1#affinity" in caplog.text
