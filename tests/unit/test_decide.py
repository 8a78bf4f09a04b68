from __future__ import annotations

from types import MappingProxyType

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.priorities import region_priorities
from controlplane.decide.weights import LEVELS, MAX_WEIGHT, REFERENCE_WEIGHT, quantize, weights
from controlplane.fleet.model import GpuStats, ModelState
from controlplane.intent import Intent, Rollout
from controlplane.ir import Health, Plan
from tests.fleetgen import fleet, replica

NODE = EnvoyNode(role="edge", region="us", zone="us-a", listen_port=10000)
NOW = 50.0


def eps(plan: Plan, cluster: str) -> dict[str, tuple[int, str, int]]:
    (c,) = [c for c in plan.clusters if c.name == cluster]
    return {e.replica_id: (e.weight, e.health.value, e.priority) for e in c.endpoints}


def test_one_cluster_per_model_version_and_route_by_model() -> None:
    f = fleet(
        replica("n1/a", models=(("llama", "v1", ModelState.READY),)),
        replica(
            "n2/a", models=(("llama", "v2", ModelState.READY), ("qwen", "q1", ModelState.READY))
        ),
    )
    plan = decide(f, Intent(), NODE, NOW)
    assert [c.name for c in plan.clusters] == [
        "llama@v1",
        "llama@v1#affinity",
        "llama@v2",
        "llama@v2#affinity",
        "qwen@q1",
        "qwen@q1#affinity",
    ]
    assert plan.validate() == []
    routes = {m.model: m for m in plan.route_configs[0].models}
    assert set(routes) == {"llama", "qwen"}
    # no rollout intent, a tie on replica count: the greatest version name wins
    assert [(w.cluster, w.weight) for w in routes["llama"].clusters] == [("llama@v2", 10_000)]
    assert routes["llama"].versions == (("v1", "llama@v1"), ("v2", "llama@v2"))


def test_stale_and_loading_and_faulty_replicas_are_absent() -> None:
    f = fleet(
        replica("n1/a"),
        replica("n2/a", expires_at=NOW),  # expired exactly now
        replica("n3/a", models=(("llama", "v1", ModelState.LOADING),)),
        replica("n4/a", gpus=(GpuStats(index=0, faulty=True, fault_reason="xid 79"),)),
    )
    plan = decide(f, Intent(), NODE, NOW)
    assert set(eps(plan, "llama@v1")) == {"n1/a"}


def test_draining_and_unloading_are_draining_and_take_no_route() -> None:
    f = fleet(
        replica("n1/a"),
        replica("n2/a", draining=True),
        replica("n3/a", models=(("llama", "v1", ModelState.UNLOADING),)),
        replica("n4/a"),
    )
    plan = decide(f, Intent(drained=frozenset({"n4/a"})), NODE, NOW)
    health = {k: v[1] for k, v in eps(plan, "llama@v1").items()}
    assert health == {"n1/a": "HEALTHY", "n2/a": "DRAINING", "n3/a": "DRAINING", "n4/a": "DRAINING"}


def test_busier_replica_gets_smaller_weight_and_weights_are_at_least_one() -> None:
    f = fleet(
        replica("n1/a"),
        replica("n2/a", running=8, waiting=10, kv=0.9),
        replica("n3/a", speed=2.0),
    )
    w = {k: v[0] for k, v in eps(decide(f, Intent(), NODE, NOW), "llama@v1").items()}
    assert w["n3/a"] == max(w.values())
    assert w["n1/a"] < w["n3/a"]
    assert 1 <= w["n2/a"] < w["n1/a"]


def test_throttled_and_warming_lower_the_weight() -> None:
    f = fleet(
        replica("n1/a"),
        replica("n2/a", gpus=(GpuStats(index=0, throttled=True),)),
        replica("n3/a", models=(("llama", "v1", ModelState.WARMING),)),
    )
    w = {k: v[0] for k, v in eps(decide(f, Intent(), NODE, NOW), "llama@v1").items()}
    top = REFERENCE_WEIGHT  # an idle replica of speed 1
    assert w["n1/a"] == top and w["n2/a"] < top and w["n3/a"] < w["n2/a"]


def test_own_region_is_priority_zero_and_others_follow_by_distance() -> None:
    f = fleet(
        replica("n1/a", region="us"),
        replica("n2/a", region="eu"),
        replica("n3/a", region="ap"),
    )
    dist = MappingProxyType({"us": MappingProxyType({"eu": 10, "ap": 20})})
    prio = {
        k: v[2]
        for k, v in eps(decide(f, Intent(region_distance=dist), NODE, NOW), "llama@v1").items()
    }
    assert prio == {"n1/a": 0, "n2/a": 1, "n3/a": 2}
    eu_node = EnvoyNode(region="eu")
    prio_eu = {
        k: v[2]
        for k, v in eps(decide(f, Intent(region_distance=dist), eu_node, NOW), "llama@v1").items()
    }
    # no distances configured from eu: the other regions share the next priority
    assert prio_eu == {"n2/a": 0, "n1/a": 1, "n3/a": 1}


def test_region_priorities_are_dense_with_unknown_last() -> None:
    p = region_priorities("us", ["us", "eu", "ap", "sa"], {"us": {"eu": 5, "ap": 5}})
    assert p == {"us": 0, "eu": 1, "ap": 1, "sa": 2}


def test_canary_split_and_sticky_header() -> None:
    f = fleet(
        replica("n1/a", models=(("llama", "v1", ModelState.READY),)),
        replica("n2/a", models=(("llama", "v2", ModelState.READY),)),
    )
    intent = Intent(rollouts=MappingProxyType({"llama": Rollout("v1", "v2", 10.0)}))
    (route,) = decide(f, intent, NODE, NOW).route_configs[0].models
    assert [(w.cluster, w.weight) for w in route.clusters] == [
        ("llama@v1", 9000),
        ("llama@v2", 1000),
    ]
    assert route.session_header == "x-session-id"


def test_rollout_to_a_version_without_replicas_keeps_stable() -> None:
    f = fleet(replica("n1/a", models=(("llama", "v1", ModelState.READY),)))
    intent = Intent(rollouts=MappingProxyType({"llama": Rollout("v1", "v9", 50.0)}))
    (route,) = decide(f, intent, NODE, NOW).route_configs[0].models
    assert [(w.cluster, w.weight) for w in route.clusters] == [("llama@v1", 10_000)]


def test_loading_version_has_an_empty_cluster_but_no_route() -> None:
    f = fleet(replica("n1/a", models=(("llama", "v1", ModelState.LOADING),)))
    plan = decide(f, Intent(), NODE, NOW)
    assert [(c.name, c.endpoints) for c in plan.clusters] == [
        ("llama@v1", ()),
        ("llama@v1#affinity", ()),
    ]
    assert plan.route_configs[0].models == ()
    assert plan.validate() == []


def test_decide_is_deterministic_regardless_of_input_order() -> None:
    reps = [replica(f"n{i}/a", running=i) for i in range(20)]
    a = decide(fleet(*reps), Intent(), NODE, NOW)
    b = decide(fleet(*reversed(reps)), Intent(), NODE, NOW)
    assert a == b


def test_quantize_snaps_to_ladder_and_bounds() -> None:
    assert quantize(0.0) == 1 and quantize(1e9) == MAX_WEIGHT
    assert all(quantize(x) in LEVELS for x in (1.3, 5, 7.7, 50, 99))
    # noise inside one level does not change the weight
    assert quantize(40) == quantize(44) == 39
    assert weights([1.0, 0.5]) == [REFERENCE_WEIGHT, quantize(REFERENCE_WEIGHT / 2)]
    assert weights([]) == []


def test_plan_validate_names_problems() -> None:
    f = fleet(replica("n1/a"))
    plan = decide(f, Intent(), NODE, NOW)
    bad = Plan(clusters=(), route_configs=plan.route_configs, listeners=plan.listeners)
    assert bad.validate() == [
        "route-to-missing-cluster:llama:llama@v1",
        "route-to-missing-cluster:llama:llama@v1#affinity",
    ]
    assert Health.DRAINING.value == "DRAINING"
