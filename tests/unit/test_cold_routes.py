"""decide(): a model that can be loaded but is served nowhere is routed to the activators."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.cold import SLOW_START_S
from controlplane.fleet.model import AvailableModel, GpuStats, ModelState, ObservedReplica
from controlplane.intent import Intent, ModelPlacement
from controlplane.ir import ACTIVATOR_CLUSTER, Health, LbPolicy, Plan
from tests.fleetgen import fleet, replica

NODE = EnvoyNode(role="edge", region="us", zone="us-a")
ACT = Intent(activators=(("127.0.0.1", 18081), ("127.0.0.2", 18081)))


def can_load(obs: ObservedReplica, *names: str) -> ObservedReplica:
    rec = dataclasses.replace(obs.record, available=tuple(AvailableModel(n) for n in names))
    return dataclasses.replace(obs, record=rec)


def routes(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {m.model: tuple(w.cluster for w in m.clusters) for m in plan.route_configs[0].models}


def cold(plan: Plan) -> set[str]:
    return {m.model for m in plan.route_configs[0].models if m.activator}


def test_a_loadable_model_served_nowhere_goes_to_the_activators_and_a_served_one_never() -> None:
    f = fleet(can_load(replica("n1/0"), "qwen"), replica("n2/0"))
    plan = decide(f, ACT, NODE, now=1.0)
    assert routes(plan) == {"llama": ("llama@v1",), "qwen": (ACTIVATOR_CLUSTER,)}
    assert cold(plan) == {"qwen"}
    act = next(c for c in plan.clusters if c.name == ACTIVATOR_CLUSTER)
    assert act.lb_policy is LbPolicy.ROUND_ROBIN
    assert [(e.address, e.port, e.health) for e in act.endpoints] == [
        ("127.0.0.1", 18081, Health.HEALTHY),
        ("127.0.0.2", 18081, Health.HEALTHY),
    ]
    assert plan.validate() == []


def test_loading_warming_and_sleeping_states_decide_cold_or_served() -> None:
    def plan_with(state: ModelState) -> Plan:
        return decide(fleet(replica("n1/0", models=(("qwen", "v1", state),))), ACT, NODE, 1.0)

    assert cold(plan_with(ModelState.LOADING)) == {"qwen"}
    assert cold(plan_with(ModelState.SLEEPING)) == {"qwen"}
    warming = plan_with(ModelState.WARMING)
    assert cold(warming) == set() and routes(warming) == {"qwen": ("qwen@v1",)}
    sleeping = plan_with(ModelState.SLEEPING)
    assert all(not c.endpoints for c in sleeping.clusters if c.model == "qwen")


def test_unusable_replicas_make_nothing_cold_and_without_activators_nothing_changes() -> None:
    faulty = replica("n1/0", gpus=(GpuStats(index=0, faulty=True),))
    stale = replica("n2/0", expires_at=0.5)
    drained = replica("n3/0", draining=True)
    f = fleet(*(can_load(r, "qwen") for r in (faulty, stale, drained)))
    assert cold(decide(f, ACT, NODE, 1.0)) == set()
    # the activator cluster stays without cold models (no CDS removal racing the RDS move)
    assert any(c.name == ACTIVATOR_CLUSTER for c in decide(f, ACT, NODE, 1.0).clusters)
    f = fleet(can_load(replica("n1/0"), "qwen"))
    plain = decide(f, Intent(), NODE, 1.0)
    assert routes(plain) == {"llama": ("llama@v1",)}
    assert not any(c.name == ACTIVATOR_CLUSTER for c in plain.clusters)


def test_a_placed_model_is_cold_even_before_any_replica_lists_it() -> None:
    it = dataclasses.replace(
        ACT, placement=MappingProxyType({"mistral": ModelPlacement(fallback="llama")})
    )
    assert cold(decide(fleet(replica("n1/0")), it, NODE, 1.0)) == {"mistral"}


def test_on_demand_models_get_envoy_slow_start_and_fixed_ones_do_not() -> None:
    f = fleet(can_load(replica("n1/0", models=(("qwen", "v1", ModelState.WARMING),)), "qwen"))
    f.update(fleet(replica("n2/0")))
    plan = decide(f, Intent(), NODE, 1.0)
    slow = {c.name: c.slow_start_window_s for c in plan.clusters}
    assert slow["qwen@v1"] == SLOW_START_S and slow["llama@v1"] == 0.0
