"""Model placement: pins, demand, priorities, GPU memory, scale-down and hysteresis."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.decide.forecast import Forecast
from controlplane.decide.placement import (
    Hold,
    Holding,
    ModelDemand,
    Placement,
    PlacementConfig,
    place,
)
from controlplane.fleet.desired import Desired
from controlplane.fleet.model import (
    AvailableModel,
    GpuStats,
    ModelFailure,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.intent import Intent, ModelPlacement, Rollout

GB = 1 << 30
CFG = PlacementConfig()


def av(name: str, gb: int = 10, load: float = 30.0, wake: float = 1.0) -> AvailableModel:
    return AvailableModel(name=name, version="v1", mem_bytes=gb * GB, load_s=load, wake_s=wake)


def rep(
    rid: str,
    *available: AvailableModel,
    region: str = "us",
    zone: str = "us-a",
    mem_gb: int = 80,
    loaded: tuple[tuple[str, ModelState], ...] = (),
    expires_at: float = 1e12,
    faulty: bool = False,
    failures: tuple[ModelFailure, ...] = (),
    gpu: str = "",
) -> ObservedReplica:
    return ObservedReplica(
        record=ReplicaRecord(
            replica_id=rid,
            node=rid.split("/")[0],
            region=region,
            zone=zone,
            address="10.0.0.1",
            port=8000,
            server_kind=ServerKind.VLLM,
            models=tuple(ModelInfo(n, "v1", s) for n, s in loaded),
            gpus=(GpuStats(index=0, uuid=gpu, mem_total_bytes=mem_gb * GB, faulty=faulty),),
            available=available,
            failures=failures,
        ),
        expires_at=expires_at,
    )


def fleet(*reps: ObservedReplica) -> dict[str, ObservedReplica]:
    return {r.record.replica_id: r for r in reps}


def pins(**spec: ModelPlacement) -> Intent:
    return Intent(placement=MappingProxyType(spec))


def waiting(*models: str) -> dict[str, ModelDemand]:
    return {m: ModelDemand(waiting=1) for m in models}


def entry(p: Placement, rid: str, model: str) -> Desired | None:
    node, server = rid.split("/")
    d = p.desired.get(node, {}).get(model)
    return d if d is not None and d.server == server else None


def state(p: Placement, rid: str, model: str) -> str:
    d = entry(p, rid, model)
    if d is None:
        return "-"
    return "unloaded" if not d.loaded else "sleeping" if d.sleeping else "loaded"


def held_bytes(p: Placement, f: Mapping[str, ObservedReplica], rid: str) -> int:
    avail = {a.name: a.mem_bytes for a in f[rid].record.available}
    return sum(avail.get(m, 0) for m in p.holdings.get(rid, {}))


READY = ModelState.READY


# -- pins and memory -----------------------------------------------------------------------


def test_pinned_models_are_kept_under_memory_pressure() -> None:
    f = fleet(rep("n1/s", av("pinned", 40), av("hot", 40), loaded=(("pinned", READY),)))
    intent = pins(pinned=ModelPlacement(min_resident={"us": 1}), hot=ModelPlacement(priority=9))
    p = place(f, intent, waiting("hot"), None, 0.0, CFG)
    assert state(p, "n1/s", "pinned") == "loaded"
    assert state(p, "n1/s", "hot") == "-"  # 80 GB less 10 %: one 40 GB model fits
    d = p.decisions["hot"]
    assert d.unplaced == 1 and "no GPU memory for it on any replica" in d.reasons
    assert p.decisions["pinned"].wanted == {"us": 1}
    assert "pinned 1 in us" in p.decisions["pinned"].reasons


def test_pins_are_placed_per_region_and_every_region_by_the_empty_key() -> None:
    f = fleet(
        rep("a1/s", av("m"), region="us"),
        rep("a2/s", av("m"), region="us"),
        rep("b1/s", av("m"), region="eu"),
    )
    p = place(f, pins(m=ModelPlacement(min_resident={"": 1, "us": 2})), {}, None, 0.0, CFG)
    assert p.decisions["m"].wanted == {"eu": 1, "us": 2}
    assert set(p.decisions["m"].awake) == {"a1/s", "a2/s", "b1/s"}
    # a pinned model is never put to sleep, however long nobody asks for it
    for t in (100.0, 1000.0, 5000.0):
        p = place(f, pins(m=ModelPlacement(min_resident={"": 1, "us": 2})), {}, p, t, CFG)
    assert set(p.decisions["m"].awake) == {"a1/s", "a2/s", "b1/s"}


def test_a_higher_priority_need_evicts_a_loaded_model_and_a_lower_one_does_not() -> None:
    f = fleet(rep("n1/s", av("low", 40), av("high", 40), loaded=(("low", READY),)))
    intent = pins(low=ModelPlacement(priority=0), high=ModelPlacement(priority=5))
    demand = {"low": ModelDemand(rate=0.5), "high": ModelDemand(waiting=2)}
    p = place(f, intent, demand, None, 0.0, CFG)
    assert state(p, "n1/s", "high") == "loaded"
    assert state(p, "n1/s", "low") == "unloaded"
    assert any("memory needed → unload" in r for r in p.decisions["low"].reasons)

    f = fleet(rep("n1/s", av("low", 40), av("high", 40), loaded=(("high", READY),)))
    demand = {"low": ModelDemand(waiting=3), "high": ModelDemand(rate=0.5)}
    p = place(f, intent, demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "high"), state(p, "n1/s", "low")) == ("loaded", "-")
    assert p.decisions["low"].unplaced == 1


def test_equal_priority_does_not_evict_a_used_model() -> None:
    f = fleet(rep("n1/s", av("a", 40), av("b", 40), loaded=(("a", READY),)))
    demand = {"a": ModelDemand(rate=0.5), "b": ModelDemand(waiting=1)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("loaded", "-")


def test_a_model_with_a_request_seconds_ago_is_serving_though_its_rate_dipped() -> None:
    """Found by bench.coldstart: a 0.3 req/s model's decaying rate dips under active_rps
    between Poisson arrivals, and one waiting request of a rare model evicted it."""
    just_used = Forecast(True, "active", 60.0, 0.0, False, 0.0, None, 0.15, 3.0, active=True)
    f = fleet(rep("n1/s", av("a", 40), av("b", 40), loaded=(("a", READY),)))
    demand = {"a": ModelDemand(rate=0.15, forecast=just_used), "b": ModelDemand(waiting=1)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("loaded", "-")
    quiet = replace(just_used, idle_s=30.0, active=False)  # 30 s without one: it gives way
    demand["a"] = ModelDemand(rate=0.15, forecast=quiet)
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("unloaded", "loaded")


def test_a_model_expected_again_within_its_reload_keeps_its_memory_between_requests() -> None:
    """Found by bench.coldstart on a Zipf trace: a popular steady model (0.17 req/s,
    a 56 s load) between two requests was only "expected", so one waiting request of a
    model used once in minutes took its memory, and the popular one waited a reload."""
    between = Forecast(True, "pre-warm", 60.0, 10.0, True, 0.05, 0.0, 0.02, 15.0, expected=True)
    f = fleet(rep("n1/s", av("a", 40, load=40.0), av("b", 40), loaded=(("a", READY),)))
    demand = {"a": ModelDemand(rate=0.02, forecast=between), "b": ModelDemand(waiting=1)}
    p = place(f, Intent(), demand, None, 0.0, CFG)  # 0.05 req/s x 40 s: 2 requests
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("loaded", "-")
    assert "2.0 requests expected within a 40 s reload" in p.decisions["a"].reasons
    seldom = replace(between, expected_rate=0.02)  # 0.8 of a request: it gives way
    demand["a"] = ModelDemand(rate=0.02, forecast=seldom)
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("unloaded", "loaded")
    fast = fleet(rep("n1/s", av("a", 40, load=10.0), av("b", 40), loaded=(("a", READY),)))
    demand["a"] = ModelDemand(rate=0.02, forecast=between)  # 0.5 within a 10 s reload
    p = place(fast, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("unloaded", "loaded")


def test_a_request_held_past_the_starving_bound_takes_a_served_models_memory() -> None:
    f = fleet(rep("n1/s", av("a", 40), av("b", 40), loaded=(("a", READY),)))
    demand = {"a": ModelDemand(rate=0.5), "b": ModelDemand(waiting=1, waited_s=30.0)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("loaded", "-")
    demand["b"] = ModelDemand(waiting=1, waited_s=CFG.starving_after_s)
    p = place(f, Intent(), demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("unloaded", "loaded")
    assert "held 60 s: outranks models served now" in p.decisions["b"].reasons
    # a higher priority still wins over a starving request
    high = pins(a=ModelPlacement(priority=5))
    p = place(f, high, demand, None, 0.0, CFG)
    assert (state(p, "n1/s", "a"), state(p, "n1/s", "b")) == ("loaded", "-")


def test_an_idle_model_gives_way_to_any_need() -> None:
    f = fleet(rep("n1/s", av("idle", 40), av("b", 40), loaded=(("idle", READY),)))
    p = place(f, Intent(), waiting("b"), None, 0.0, CFG)
    assert (state(p, "n1/s", "idle"), state(p, "n1/s", "b")) == ("unloaded", "loaded")


def test_a_fresh_load_is_not_evicted_within_the_hold_time() -> None:
    f = fleet(rep("n1/s", av("low", 40), av("high", 40)))
    intent = pins(high=ModelPlacement(priority=5))
    p = place(f, intent, waiting("low"), None, 0.0, CFG)
    assert state(p, "n1/s", "low") == "loaded"
    demand = {"low": ModelDemand(rate=0.1), "high": ModelDemand(waiting=1)}
    p = place(f, intent, demand, p, 30.0, CFG)  # 30 s < hold 60 s
    assert (state(p, "n1/s", "low"), state(p, "n1/s", "high")) == ("loaded", "-")
    p = place(f, intent, demand, p, 61.0, CFG)
    assert (state(p, "n1/s", "low"), state(p, "n1/s", "high")) == ("unloaded", "loaded")


# -- which replica -------------------------------------------------------------------------


def test_a_waiting_request_loads_one_replica_the_fastest_loader() -> None:
    f = fleet(
        rep("n1/s", av("m", load=60.0)),
        rep("n2/s", av("m", load=20.0)),
        rep("n3/s", av("m", load=40.0)),
    )
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    assert p.decisions["m"].awake == ("n2/s",)
    assert p.desired == {"n2": {"m": Desired("m", server="s", version="v1")}}


def test_a_sleeping_replica_is_woken_before_any_load() -> None:
    f = fleet(
        rep("n1/s", av("m", load=5.0)),
        rep("n2/s", av("m", load=60.0, wake=2.0), loaded=(("m", ModelState.SLEEPING),)),
    )
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    assert p.decisions["m"].awake == ("n2/s",)
    assert state(p, "n2/s", "m") == "loaded"


def test_a_wake_takes_over_from_a_load_that_would_take_longer() -> None:
    loading = rep("n1/s", av("m", load=60.0))
    p0 = place(fleet(loading), Intent(), waiting("m"), None, 0.0, CFG)
    assert state(p0, "n1/s", "m") == "loaded"  # a 60 s load starts at 0
    f = fleet(
        rep("n1/s", av("m", load=60.0), loaded=(("m", ModelState.LOADING),)),
        rep("n2/s", av("m", wake=1.0), loaded=(("m", ModelState.SLEEPING),)),
    )
    # 5 s in, 55 s of load are left: the copy asleep on n2 is woken (about 1 s)
    p = place(f, Intent(), waiting("m"), p0, 5.0, CFG)
    assert state(p, "n2/s", "m") == "loaded"
    # 59.5 s in, the load is done sooner than a wake: n2 is left asleep
    p = place(f, Intent(), waiting("m"), p0, 59.5, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n2/s", "m")) == ("loaded", "sleeping")
    # loaded ahead of demand (no request waits), the load ends in time: no second copy
    p = place(f, Intent(), {"m": ModelDemand(rate=0.5)}, p0, 5.0, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n2/s", "m")) == ("loaded", "sleeping")
    # a server being woken (published as sleeping until it is awake) counts its wake only
    waking = fleet(
        rep("n1/s", av("m", load=60.0), loaded=(("m", ModelState.LOADING),)),
        rep("n2/s", av("m", wake=1.0), loaded=(("m", ModelState.SLEEPING),)),
        rep("n3/s", av("m", wake=2.0), loaded=(("m", ModelState.SLEEPING),)),
    )
    p1 = place(waking, Intent(), waiting("m"), p0, 5.0, CFG)
    assert [state(p1, f"n{i}/s", "m") for i in (2, 3)] == ["loaded", "sleeping"]
    # 0.5 s later n2 still says sleeping: half a second of its wake is left, not a load
    p2 = place(waking, Intent(), waiting("m"), p1, 5.5, CFG)
    assert [state(p2, f"n{i}/s", "m") for i in (2, 3)] == ["loaded", "sleeping"]


def test_a_load_under_way_is_left_to_finish_when_no_need_keeps_it() -> None:
    # a server's load call runs to its end: unloading it frees nothing sooner, and the
    # agent holds back the other servers of its GPU meanwhile
    p0 = place(fleet(rep("n1/s", av("m", load=100.0))), Intent(), waiting("m"), None, 0.0, CFG)
    f = fleet(
        rep("n1/s", av("m", load=100.0), loaded=(("m", ModelState.LOADING),)),
        rep("n2/s", av("m"), loaded=(("m", READY),)),  # woken meanwhile
    )
    p = place(f, Intent(), waiting("m"), p0, CFG.hold_s + CFG.scale_down_after_s + 1, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n2/s", "m")) == ("loaded", "loaded")
    assert p.decisions["m"].wanted == {"us": 1}  # n1 is spare, not needed
    # nor is it evicted for a need of a higher level
    big = fleet(
        rep("n1/s", av("m", 40, load=100.0), av("hot", 40), loaded=(("m", ModelState.LOADING),)),
    )
    p = place(big, pins(hot=ModelPlacement(min_resident={"us": 1})), {}, p0, 150.0, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n1/s", "hot")) == ("loaded", "-")
    # a load that hangs (twice its load time) is let go like any spare model
    p = place(big, pins(hot=ModelPlacement(min_resident={"us": 1})), {}, p0, 200.0, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n1/s", "hot")) == ("unloaded", "loaded")


def test_an_awake_replica_is_used_before_a_sleeping_one() -> None:
    f = fleet(
        rep("n1/s", av("m"), loaded=(("m", ModelState.SLEEPING),)),
        rep("n2/s", av("m"), loaded=(("m", READY),)),
    )
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    assert (state(p, "n1/s", "m"), state(p, "n2/s", "m")) == ("sleeping", "loaded")


def test_demand_spreads_across_zones() -> None:
    f = fleet(
        rep("n1/s", av("m", load=10.0), zone="a"),
        rep("n2/s", av("m", load=11.0), zone="a"),
        rep("n3/s", av("m", load=30.0), zone="b"),
    )
    p = place(f, Intent(), {"m": ModelDemand(rate=3.5)}, None, 0.0, CFG)
    assert p.decisions["m"].awake == ("n1/s", "n3/s")
    assert "3.5 req/s → 2 replicas" in p.decisions["m"].reasons


def test_one_node_holds_a_model_on_one_server_only() -> None:
    f = fleet(rep("n1/a", av("m")), rep("n1/b", av("m")), rep("n2/a", av("m", load=90.0)))
    p = place(f, Intent(), {"m": ModelDemand(rate=6.0)}, None, 0.0, CFG)
    assert p.decisions["m"].awake == ("n1/a", "n2/a")
    assert p.decisions["m"].unplaced == 1
    assert "no eligible replica can load it" in p.decisions["m"].reasons


def test_max_replicas_caps_the_demand() -> None:
    f = fleet(*(rep(f"n{i}/s", av("m")) for i in range(5)))
    p = place(
        f, pins(m=ModelPlacement(max_replicas=2)), {"m": ModelDemand(rate=100.0)}, None, 0, CFG
    )
    assert len(p.decisions["m"].awake) == 2
    assert "max_replicas 2" in p.decisions["m"].reasons


def test_max_replicas_sends_extra_holders_away_after_the_hold() -> None:
    f = fleet(*(rep(f"n{i}/s", av("m"), loaded=(("m", READY),)) for i in range(4)))
    intent = pins(m=ModelPlacement(max_replicas=2))
    p = place(f, intent, {"m": ModelDemand(rate=1.0)}, None, 0.0, CFG)
    assert len(p.decisions["m"].awake) == 2
    assert sum(state(p, f"n{i}/s", "m") == "unloaded" for i in range(4)) == 2


def test_drained_faulty_and_stale_replicas_get_nothing_new() -> None:
    f = fleet(
        rep("drained/s", av("m", load=1.0)),
        rep("faulty/s", av("m", load=1.0), faulty=True),
        rep("stale/s", av("m", load=1.0), expires_at=5.0),
        rep("ok/s", av("m", load=90.0)),
    )
    intent = Intent(drained=frozenset({"drained"}))
    p = place(f, intent, waiting("m"), None, 10.0, CFG)
    assert p.decisions["m"].awake == ("ok/s",)
    del f["ok/s"]
    p = place(f, intent, waiting("m"), None, 10.0, CFG)
    assert p.decisions["m"].awake == () and p.desired == {}
    assert p.decisions["m"].reasons[-1] == "no eligible replica can load it"


def test_a_drained_replica_keeps_what_it_was_asked_for() -> None:
    f = fleet(rep("n1/s", av("m")), rep("n2/s", av("m")))
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    assert p.decisions["m"].awake == ("n1/s",)
    p = place(f, Intent(drained=frozenset({"n1/s"})), {}, p, 5000.0, CFG)
    assert state(p, "n1/s", "m") == "loaded"  # not slept or unloaded behind the drain
    assert p.holdings["n1/s"]["m"].since == 0.0


def test_a_replica_that_keeps_failing_to_load_is_not_asked_again() -> None:
    fail = ModelFailure(name="m", version="v1", op="load", error="no", permanent=True)
    f = fleet(rep("n1/s", av("m", load=1.0), failures=(fail,)), rep("n2/s", av("m", load=50.0)))
    prev = Placement(
        desired={"n1": {"m": Desired("m", server="s", version="v1")}},
        holdings={"n1/s": {"m": Holding(Hold.LOADED, 0.0, None, "v1")}},
    )
    p = place(f, Intent(), waiting("m"), prev, 10.0, CFG)
    assert p.decisions["m"].awake == ("n2/s",)
    assert state(p, "n1/s", "m") == "unloaded"  # stops the agent's retries


def test_the_version_is_the_rollouts_stable_else_the_available_one() -> None:
    f = fleet(rep("n1/s", av("m"), av("k")))
    intent = Intent(rollouts=MappingProxyType({"m": Rollout(stable="v7")}))
    p = place(f, intent, waiting("m", "k"), None, 0.0, CFG)
    assert p.desired["n1"]["m"].version == "v7"
    assert p.desired["n1"]["k"].version == "v1"


def test_models_not_available_anywhere_are_never_touched() -> None:
    f = fleet(rep("n1/s", av("m"), loaded=(("base", READY),)))
    for t in (0.0, 1000.0, 10_000.0):
        p = place(f, Intent(), {}, None, t, CFG)
        assert "base" not in p.desired.get("n1", {}) and "base" not in p.decisions


def test_the_result_is_deterministic() -> None:
    reps = [rep(f"n{i}/s", av("a", 30), av("b", 30), zone=f"z{i % 3}") for i in range(9)]
    demand = {"a": ModelDemand(rate=5.0), "b": ModelDemand(rate=3.0, waiting=1)}
    one = place(fleet(*reps), Intent(), demand, None, 0.0, CFG)
    two = place(fleet(*reversed(reps)), Intent(), demand, None, 0.0, CFG)
    assert one == two


# -- scale-down ----------------------------------------------------------------------------


def run_idle(f: dict[str, ObservedReplica], until: float, p: Placement, start: float) -> list[str]:
    """Tick every second with no demand; the states of n1/s's model ``m``, one per tick."""
    states = []
    t = start
    while t <= until:
        p = place(f, Intent(), {}, p, t, CFG)
        states.append(state(p, "n1/s", "m"))
        t += 1.0
    return states


def test_idle_model_sleeps_then_unloads_after_the_times_not_before() -> None:
    # a server that can serve two models: asleep, "m" keeps its GPU memory (sleep is per
    # server), so it is unloaded after the time
    f = fleet(rep("n1/s", av("m", wake=1.5), av("other")))
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    assert state(p, "n1/s", "m") == "loaded"
    states = run_idle(f, 800.0, p, 1.0)  # idle from t=1
    at = {t + 1: s for t, s in enumerate(states)}
    assert at[120.0] == "loaded"  # 119 s without a need
    assert at[121.0] == "sleeping"
    assert at[720.0] == "sleeping"
    assert at[721.0] == "unloaded"
    assert states.count("loaded") + states.count("sleeping") == 720


def test_a_server_that_cannot_sleep_keeps_it_loaded_then_unloads() -> None:
    f = fleet(rep("n1/s", av("m", wake=0.0)))
    p = place(f, Intent(), waiting("m"), None, 0.0, CFG)
    states = run_idle(f, 800.0, p, 1.0)
    assert "sleeping" not in states
    assert states.index("unloaded") + 1 == 721  # 120 + 600 s without a need


def test_a_forecast_keeps_it_awake_and_the_unload_entry_ends_once_it_is_gone() -> None:
    f = fleet(rep("n1/s", av("m"), av("other"), loaded=(("m", READY),)))
    keep = Forecast(True, "idle 30 s < keep-alive 600 s", 600.0, 0.0, False, 0.0, None, 0.0, 30)
    p = place(f, Intent(), {"m": ModelDemand(forecast=keep)}, None, 0.0, CFG)
    p = place(f, Intent(), {"m": ModelDemand(forecast=keep)}, p, 500.0, CFG)
    assert state(p, "n1/s", "m") == "loaded"
    assert "idle 30 s < keep-alive 600 s" in p.decisions["m"].reasons
    for t in range(501, 1300, 10):
        p = place(f, Intent(), {}, p, float(t), CFG)
    assert state(p, "n1/s", "m") == "unloaded"  # still on the server: keep asking
    gone = fleet(rep("n1/s", av("m"), av("other")))
    p = place(gone, Intent(), {}, p, 1300.0, CFG)
    assert p.desired == {} and p.holdings == {}


def test_a_restart_adopts_what_the_servers_hold() -> None:
    f = fleet(rep("n1/s", av("m"), loaded=(("m", ModelState.SLEEPING),)))
    p = place(f, Intent(), {}, None, 0.0, CFG)
    assert state(p, "n1/s", "m") == "sleeping"
    assert p.holdings["n1/s"]["m"].idle_since == 0.0


# -- servers that share a GPU, and sleep on their own ----------------------------------


def one_gpu(*models: tuple[str, int], loaded: tuple[str, ...] = ()) -> dict[str, ObservedReplica]:
    """One server per model on node n1, all on the same 80 GB GPU (its uuid)."""
    return fleet(
        *(
            rep(f"n1/{m}", av(m, gb), gpu="GPU-1", loaded=((m, READY),) if m in loaded else ())
            for m, gb in models
        )
    )


def acted(f: dict[str, ObservedReplica], p: Placement) -> dict[str, ObservedReplica]:
    """``f`` once the agents did what ``p`` asks (loads ready, sleeps asleep, unloads gone)."""
    out = {}
    for rid, o in f.items():
        node, server = rid.split("/")
        want = p.desired.get(node, {})
        models = tuple(
            ModelInfo(m, "v1", ModelState.SLEEPING if d.sleeping else READY)
            for m, d in want.items()
            if d.server == server and d.loaded
        )
        out[rid] = replace(o, record=replace(o.record, models=models))
    return out


def test_a_sleep_frees_the_gpu_once_the_server_says_it_sleeps() -> None:
    f = one_gpu(("a", 40), ("b", 40), loaded=("a",))
    p = place(f, Intent(), waiting("a"), None, 0.0, CFG)
    p = place(f, Intent(), waiting("b"), p, 100.0, CFG)
    assert [state(p, f"n1/{m}", m) for m in "ab"] == ["sleeping", "loaded"]
    # the server still says a is awake (its drain, or an agent that is slow): a's weights
    # still take the GPU, so when it is needed it is unloaded rather than kept asleep
    p = place(f, Intent(), {"b": ModelDemand(waiting=1)}, p, 200.0, CFG)
    assert [state(p, f"n1/{m}", m) for m in "ab"] == ["unloaded", "loaded"]
    assert "n1/a: memory needed → unload" in p.decisions["a"].reasons


def test_servers_on_one_gpu_share_its_memory() -> None:
    f = one_gpu(("a", 40), ("b", 40))
    p = place(f, Intent(), waiting("a", "b"), None, 0.0, CFG)
    # each server reports the whole GPU: counted once, 72 GB usable, one 40 GB model fits
    assert sorted(state(p, f"n1/{m}", m) for m in "ab") == ["-", "loaded"]
    assert "no GPU memory for it on any replica" in p.decisions["b"].reasons
    apart = fleet(rep("n1/a", av("a", 40), gpu="GPU-1"), rep("n1/b", av("b", 40), gpu="GPU-2"))
    p = place(apart, Intent(), waiting("a", "b"), None, 0.0, CFG)
    assert [state(p, f"n1/{m}", m) for m in "ab"] == ["loaded", "loaded"]


def test_a_server_asleep_on_its_own_frees_the_gpu_for_another() -> None:
    f = one_gpu(("a", 40), ("b", 40), loaded=("a",))
    p = place(f, Intent(), waiting("a"), None, 0.0, CFG)
    assert state(p, "n1/a", "a") == "loaded"
    p = place(f, Intent(), waiting("b"), p, 100.0, CFG)  # a: no need, past hold_s
    assert state(p, "n1/a", "a") == "sleeping"  # not unloaded: its wake is 1 s, not 30
    assert state(p, "n1/b", "b") == "loaded"
    assert "n1/a: GPU memory needed → sleep" in p.decisions["a"].reasons
    for t in range(101, 2000, 50):  # long past unload_after_s: host memory is not needed
        p = place(acted(f, p), Intent(), {"b": ModelDemand(waiting=1)}, p, float(t), CFG)
    assert state(p, "n1/a", "a") == "sleeping"
    p = place(acted(f, p), Intent(), waiting("a", "b"), p, 2000.0, CFG)  # b is needed too
    assert [state(p, f"n1/{m}", m) for m in "ab"] == ["sleeping", "loaded"]
    p = place(acted(f, p), Intent(), waiting("a"), p, 2001.0, CFG)  # b is not: a wakes
    assert [state(p, f"n1/{m}", m) for m in "ab"] == ["loaded", "sleeping"]


def test_a_server_serving_two_models_keeps_a_sleeping_ones_memory() -> None:
    f = fleet(rep("n1/s", av("a", 40), av("b", 40), loaded=(("a", READY),)))
    p = place(f, Intent(), waiting("a"), None, 0.0, CFG)
    p = place(f, Intent(), waiting("b"), p, 100.0, CFG)
    assert state(p, "n1/s", "a") == "unloaded"  # asleep it would still hold the GPU
    assert state(p, "n1/s", "b") == "loaded"


def test_host_memory_keeps_the_most_recently_needed_asleep() -> None:
    cfg = replace(CFG, host_sleep_ratio=1.0)  # 80 GB of host memory for sleeping weights
    f = one_gpu(("a", 30), ("b", 30), ("c", 30), ("d", 60))
    p: Placement | None = None
    for t, m in ((0.0, "a"), (100.0, "b"), (200.0, "c"), (300.0, "d")):
        p = place(f if p is None else acted(f, p), Intent(), waiting(m), p, t, cfg)
        assert state(p, f"n1/{m}", m) == "loaded"
    # d's 60 GB sent c to sleep (b and a before it); asleep: 30 + 30 of 80 GB, a went first
    assert [state(p, f"n1/{m}", m) for m in "abcd"] == [
        "unloaded",
        "sleeping",
        "sleeping",
        "loaded",
    ]
    assert "n1/a: host memory needed → unload" in p.decisions["a"].reasons


def test_the_host_memory_a_node_publishes_wins_over_the_ratio() -> None:
    """The agent publishes its node's budget for sleeping weights in every record; placement
    uses it (the largest of the node's records) instead of ``host_sleep_ratio`` x GPU."""

    def run(f: dict[str, ObservedReplica]) -> list[str]:
        p: Placement | None = None
        for t, m in ((0.0, "a"), (100.0, "b"), (200.0, "c"), (300.0, "d")):
            p = place(f if p is None else acted(f, p), Intent(), waiting(m), p, t, CFG)
        assert p is not None
        return [state(p, f"n1/{m}", m) for m in "abcd"]

    f = one_gpu(("a", 30), ("b", 30), ("c", 30), ("d", 60))
    assert run(f) == ["sleeping", "sleeping", "sleeping", "loaded"]  # 2 x 80 GB: all fit
    published = {
        rid: replace(o, record=replace(o.record, host_mem_bytes=(40 if rid == "n1/b" else 0) * GB))
        for rid, o in f.items()
    }
    assert run(published) == ["unloaded", "unloaded", "sleeping", "loaded"]  # 40 GB: one


def test_the_placement_says_what_memory_each_node_has_left() -> None:
    f = one_gpu(("a", 40), ("b", 40), loaded=("a",))
    p = place(f, Intent(), waiting("a"), None, 0.0, CFG)
    mem = p.memory["n1"]
    assert (mem.gpu_used, mem.gpu_cap) == (40 * GB, 72 * GB)  # 80 GB less the 10 % reserve
    assert (mem.host_used, mem.host_cap, mem.host_published) == (0, 160 * GB, False)
    p = place(acted(f, p), Intent(), waiting("b"), p, 100.0, CFG)  # a: no need, past hold_s
    mem = p.memory["n1"]
    assert (mem.gpu_used, mem.host_used) == (40 * GB, 40 * GB)  # a asleep, b loaded
    published = {
        rid: replace(o, record=replace(o.record, host_mem_bytes=64 * GB)) for rid, o in f.items()
    }
    mem = place(published, Intent(), waiting("a"), None, 0.0, CFG).memory["n1"]
    assert (mem.host_cap, mem.host_published) == (64 * GB, True)


def test_host_memory_keeps_first_the_model_the_forecast_expects_soonest() -> None:
    cfg = replace(CFG, host_sleep_ratio=1.0)
    f = one_gpu(("a", 30), ("b", 30), ("c", 30), ("d", 60))
    p: Placement | None = None
    for t, m in ((0.0, "a"), (100.0, "b"), (200.0, "c")):
        p = place(f if p is None else acted(f, p), Intent(), waiting(m), p, t, cfg)
    # a's idle times say its next request comes 400 s after its last (300 s ago): not
    # wanted yet, but due in 100 s; b and c predict nothing
    due = Forecast(False, "pre-warm at 400 s", 600.0, 400.0, True, 0.0, None, 0.0, 300.0)
    demand = {"a": ModelDemand(forecast=due), "d": ModelDemand(waiting=1)}
    p = place(acted(f, p), Intent(), demand, p, 300.0, cfg)
    assert [state(p, f"n1/{m}", m) for m in "abcd"] == [
        "sleeping",
        "unloaded",
        "sleeping",
        "loaded",
    ]


# -- properties ----------------------------------------------------------------------------


def count_changes(rates: list[float], cfg: PlacementConfig) -> dict[str, int]:
    """Changes of each replica's desired entry for ``m`` with one rate per second."""
    f = fleet(*(rep(f"n{i}/s", av("m", load=10.0 + i)) for i in range(4)))
    p: Placement | None = None
    changes: dict[str, int] = {}
    last: dict[str, str] = {}
    for t, rate in enumerate(rates):
        p = place(f, Intent(), {"m": ModelDemand(rate=rate)}, p, float(t), cfg)
        for rid in f:
            s = state(p, rid, "m")
            if s != last.get(rid, "-"):
                changes[rid] = changes.get(rid, 0) + 1
            last[rid] = s
    return changes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.6, 1.4), min_size=300, max_size=300))
def test_demand_noise_around_a_threshold_does_not_thrash(rates: list[float]) -> None:
    cfg = PlacementConfig(replica_rps=1.0)
    changes = count_changes(rates, cfg)
    # a replica goes down only after scale_down_after_s without a need and hold_s after its
    # last change: at most a down and an up per such span
    span = min(cfg.hold_s, cfg.scale_down_after_s)
    assert all(n <= 2 * (len(rates) / span) + 1 for n in changes.values()), changes
    assert set(changes) <= {"n0/s", "n1/s"}  # never more than the two fastest loaders


def test_steady_noise_loads_a_second_replica_once_and_keeps_it() -> None:
    rng = random.Random(3)
    rates = [rng.uniform(0.6, 1.4) for _ in range(900)]
    assert count_changes(rates, PlacementConfig(replica_rps=1.0)) == {"n0/s": 1, "n1/s": 1}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(20, 80), min_size=1, max_size=5),
    st.lists(
        st.tuples(st.integers(5, 50), st.integers(0, 3), st.floats(0, 5), st.integers(0, 2)),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_gpu_memory_is_never_exceeded(
    mems: list[int], models: list[tuple[int, int, float, int]], loaded: list[bool]
) -> None:
    names = [f"m{i}" for i in range(len(models))]
    avail = [av(n, gb) for n, (gb, _, _, _) in zip(names, models, strict=True)]
    reps = []
    for i, gb in enumerate(mems):  # a replica starts with its first model loaded, if it fits
        first = avail[i % len(avail)]
        fits = first.mem_bytes <= gb * GB * 0.9
        held = ((first.name, READY),) if loaded[i] and fits else ()
        reps.append(rep(f"n{i}/s", *avail, mem_gb=gb, loaded=held, zone=f"z{i % 2}"))
    f = fleet(*reps)
    intent = pins(
        **{
            n: ModelPlacement(min_resident={"us": pin}, priority=prio)
            for n, (_, prio, _, pin) in zip(names, models, strict=True)
        }
    )
    p: Placement | None = None
    for t, scale in enumerate((1.0, 0.0, 2.0, 0.5)):
        demand = {
            n: ModelDemand(rate=rate * scale, waiting=int(scale == 0.5))
            for n, (_, _, rate, _) in zip(names, models, strict=True)
        }
        p = place(f, intent, demand, p, t * 100.0, CFG)
        for rid in f:
            assert held_bytes(p, f, rid) <= f[rid].record.gpus[0].mem_total_bytes * 0.9
        for m, d in p.decisions.items():
            pinned = intent.placement[m].min_in("us")
            awake_pinned = min(pinned, len(d.awake))
            assert d.wanted.get("us", 0) >= awake_pinned or d.unplaced


def test_a_decaying_recent_rate_alone_does_not_keep_a_model_the_forecast_lets_go() -> None:
    def fc(wanted: bool) -> Forecast:
        return Forecast(wanted, "r", 2.0, 0.0, False, 0.0, None, 0.001, 300.0)

    f = fleet(rep("n1/s", av("m"), loaded=(("m", ModelState.READY),)))
    idle = place(f, Intent(), {"m": ModelDemand(rate=0.001, forecast=fc(False))}, None, 0.0, CFG)
    assert idle.decisions["m"].wanted == {} or sum(idle.decisions["m"].wanted.values()) == 0
    busy = place(f, Intent(), {"m": ModelDemand(rate=5.0, forecast=fc(True))}, None, 0.0, CFG)
    assert sum(busy.decisions["m"].wanted.values()) >= 1


def test_waiting_requests_evict_a_model_only_the_forecast_wants() -> None:
    """A pre-warmed model must not keep a model with waiting requests out (found by
    bench/coldstart.py: waits of up to 1,700 s)."""
    prewarm = Forecast(True, "pre-warm", 60.0, 30.0, True, 0.0, None, 0.0, 200.0)
    f = fleet(rep("n1/s", av("a", gb=40), av("b", gb=40), loaded=(("a", ModelState.READY),)))
    demand = {"a": ModelDemand(forecast=prewarm), "b": ModelDemand(waiting=100)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    later = place(f, Intent(), demand, p, CFG.hold_s + 1, CFG)
    assert later.decisions["b"].awake == ("n1/s",), later.decisions["b"]
    assert state(later, "n1/s", "a") == "unloaded"


def test_an_expected_request_evicts_a_model_only_the_fixed_keep_alive_keeps() -> None:
    """A model the forecast expects a request for (pre-warm, recurring peak) takes the
    memory of one kept only by the fixed keep-alive after a one-off request; the reverse
    does not happen (bench/coldstart.py: fewer waits on all three seeds)."""
    keep = Forecast(True, "idle 5 s < keep-alive 600 s (fixed)", 600.0, 0.0, False, 0.0, None,
                    0.0, 5.0)  # fmt: skip
    prewarm = Forecast(True, "pre-warm", 60.0, 30.0, True, 0.0, None, 0.0, 200.0,
                       expected=True)  # fmt: skip
    f = fleet(rep("n1/s", av("a", gb=40), av("b", gb=40), loaded=(("a", ModelState.READY),)))
    demand = {"a": ModelDemand(forecast=keep), "b": ModelDemand(forecast=prewarm)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    later = place(f, Intent(), demand, p, CFG.hold_s + 1, CFG)
    assert later.decisions["b"].awake == ("n1/s",), later.decisions["b"]
    assert state(later, "n1/s", "a") == "unloaded"
    # the other way round: the expected model stays, the kept-alive one waits for room
    f = fleet(rep("n1/s", av("a", gb=40), av("b", gb=40), loaded=(("b", ModelState.READY),)))
    demand = {"a": ModelDemand(forecast=keep), "b": ModelDemand(forecast=prewarm)}
    p = place(f, Intent(), demand, None, 0.0, CFG)
    later = place(f, Intent(), demand, p, CFG.hold_s + 1, CFG)
    assert later.decisions["b"].awake == ("n1/s",)
    assert later.decisions["a"].awake == () and later.decisions["a"].unplaced == 1


def test_a_model_held_within_the_hold_time_counts_before_others_are_kept() -> None:
    """Found by bench/coldstart.py: "b" just went to sleep (cannot change yet), "a" is idle
    and old; a need for "c" must unload "a", not keep it next to "b" (90 GB on 72)."""
    now = 1000.0
    f = fleet(
        rep(
            "n1/s",
            av("a", gb=32),
            av("b", gb=40),
            av("c", gb=18),
            loaded=(("a", ModelState.READY), ("b", ModelState.SLEEPING)),
        )
    )
    prev = Placement(
        at=now - 1,
        holdings=MappingProxyType(
            {
                "n1/s": MappingProxyType(
                    {
                        "a": Holding(Hold.LOADED, since=0.0, idle_since=0.0, version="v1"),
                        "b": Holding(Hold.SLEEPING, since=now - 5, idle_since=0.0, version="v1"),
                    }
                )
            }
        ),
    )
    p = place(f, Intent(), {"c": ModelDemand(waiting=3)}, prev, now, CFG)
    assert p.decisions["c"].awake == ("n1/s",)
    assert state(p, "n1/s", "b") == "sleeping" and state(p, "n1/s", "a") == "unloaded"
    assert held_bytes(p, f, "n1/s") <= 0.9 * 80 * GB
