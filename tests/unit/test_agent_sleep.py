"""The converger's sleep and wake decisions, its sleep overlay and measured times, stepped
through fake time (no I/O)."""

from __future__ import annotations

from controlplane.agent.placement.converge import (
    Action,
    Converger,
    ExecTiming,
    Observed,
    Op,
    Rest,
)
from controlplane.agent.placement.desired import Desired
from controlplane.fleet.model import AvailableModel, ModelInfo, ModelState

R, Z, W = ModelState.READY, ModelState.SLEEPING, ModelState.WARMING
T = ExecTiming(
    warmup_s=1, drain_s=2, wake_warmup_s=1, settle_s=0.5, backoff_min_s=1, backoff_max_s=8,
    jitter=0,
)  # fmt: skip
S = "vllm-8000"


def obs(*models: str, asleep: bool | None = False, can_sleep: bool = True) -> Observed:
    state = Z if asleep else R
    return Observed(True, {m: state for m in models}, True, can_sleep, asleep)


def desired(**states: str) -> dict[str, Desired]:
    return {
        m: Desired(m, S, loaded=st != "unloaded", sleeping=st == "sleeping", path="/p")
        for m, st in states.items()
    }


def step(c: Converger, d: dict[str, Desired], o: Observed, now: float) -> list[Action]:
    return c.tick(d, {S: o}, now)


def ops(actions: list[Action]) -> list[Op]:
    return [a.op for a in actions]


def test_all_managed_models_sleeping_drains_then_sleeps_then_publishes_asleep() -> None:
    c = Converger(T)
    d = desired(a="sleeping", b="sleeping")
    assert step(c, d, obs("a", "b"), 0.0) == []
    assert c.rest[S].phase is Rest.DRAINING
    models = (ModelInfo("a", "v", R), ModelInfo("b", "v", R))
    assert c.rested(S, models, False) == ((ModelInfo("a", "v", Z), ModelInfo("b", "v", Z)), True)
    assert step(c, d, obs("a", "b"), 1.9) == []  # drain_s not over
    (a,) = step(c, d, obs("a", "b"), 2.0)
    assert a.op is Op.SLEEP and a.server == S and a.model == ""
    assert step(c, d, obs("a", "b"), 2.1) == []  # one call at a time
    c.finished(a, None, 2.2)
    assert step(c, d, obs("a", "b"), 2.3) == []  # the probe predates the call: settled
    assert step(c, d, obs("a", "b", asleep=True), 3.0) == []
    assert c.rest[S].phase is Rest.ASLEEP
    assert c.rested(S, models, True)[1] is True


def test_one_model_still_loaded_keeps_the_server_awake() -> None:
    c = Converger(T)
    d = desired(a="sleeping", b="loaded")
    for t in range(10):
        assert step(c, d, obs("a", "b"), float(t)) == []
    assert c.rest[S].phase is Rest.AWAKE


def test_a_desired_loaded_model_wakes_the_server_then_warming_then_ready() -> None:
    c = Converger(T)
    d = desired(a="loaded")
    (a,) = step(c, d, obs("a", asleep=True), 0.0)
    assert a.op is Op.WAKE
    models = (ModelInfo("a", "v", Z),)
    assert c.rested(S, models, True) == (models, True)  # still asleep while waking
    c.finished(a, None, 0.6)
    assert c.measured_wake[S] == 0.6
    assert step(c, d, obs("a", asleep=True), 0.7) == []  # stale probe: no second wake
    assert c.rested(S, models, True) == ((ModelInfo("a", "v", W),), False)
    assert step(c, d, obs("a"), 1.2) == []
    assert c.rested(S, (ModelInfo("a", "v", R),), False)[0] == (ModelInfo("a", "v", W),)
    step(c, d, obs("a"), 1.7)
    assert c.rest[S].phase is Rest.AWAKE
    assert c.rested(S, (ModelInfo("a", "v", R),), False) == ((ModelInfo("a", "v", R),), False)


def test_no_load_starts_on_a_sleeping_server_it_wakes_first() -> None:
    c = Converger(T)
    d = desired(a="sleeping", new="sleeping")  # new is not there yet
    (a,) = step(c, d, obs("a", asleep=True), 0.0)
    assert a.op is Op.WAKE  # to load it
    c.finished(a, None, 0.5)
    (load,) = step(c, d, obs("a"), 0.6)
    assert load.op is Op.LOAD and load.model == "new"
    c.finished(load, None, 3.6)
    assert c.measured_load[(S, "new")] == 3.0
    assert step(c, d, obs("a", "new"), 3.7) == []
    assert c.rest[S].phase is Rest.DRAINING  # everything there and sleeping: back to sleep
    (s,) = step(c, d, obs("a", "new"), 5.7)
    assert s.op is Op.SLEEP


def test_a_kind_that_cannot_sleep_keeps_its_models_loaded_without_errors() -> None:
    c = Converger(T)
    d = desired(a="sleeping")
    for t in range(20):
        assert step(c, d, obs("a", asleep=None, can_sleep=False), float(t)) == []
    assert c.failures_total == 0 and c.rest[S].phase is Rest.AWAKE
    assert c.rested(S, (ModelInfo("a", "v", R),), None)[1] is False


def test_a_permanent_sleep_failure_is_not_retried_until_the_entry_changes() -> None:
    c = Converger(T)
    d = desired(a="sleeping")
    step(c, d, obs("a"), 0.0)
    (a,) = step(c, d, obs("a"), 2.0)
    c.finished(a, "HTTP 404: Not Found", 2.1, permanent=True)
    assert [x for t in range(3, 30) for x in step(c, d, obs("a"), float(t))] == []
    assert c.failures_total == 1
    assert c.rested(S, (ModelInfo("a", "v", R),), False)[1] is False  # published awake
    step(c, desired(a="loaded"), obs("a"), 30.0)  # changed: a new instruction
    step(c, d, obs("a"), 31.0)
    assert c.rest[S].phase is Rest.DRAINING


def test_a_transient_wake_failure_backs_off() -> None:
    c = Converger(T)
    d = desired(a="loaded")
    (a,) = step(c, d, obs("a", asleep=True), 0.0)
    c.finished(a, "HTTP 500: boom", 0.1)
    assert step(c, d, obs("a", asleep=True), 0.5) == []
    assert ops(step(c, d, obs("a", asleep=True), 1.1)) == [Op.WAKE]


def test_a_server_that_cannot_say_is_asleep_by_the_converger_phase() -> None:
    c = Converger(T)  # SGLang: sleeping is None
    d = desired(a="sleeping")
    step(c, d, obs("a", asleep=None), 0.0)
    (a,) = step(c, d, obs("a", asleep=None), 2.0)
    c.finished(a, None, 2.1)
    assert step(c, d, obs("a", asleep=None), 5.0) == []
    assert c.rested(S, (ModelInfo("a", "v", R),), None) == ((ModelInfo("a", "v", Z),), True)
    (w,) = step(c, desired(a="loaded"), obs("a", asleep=None), 6.0)
    assert w.op is Op.WAKE


def test_an_empty_desired_key_changes_no_sleep_state() -> None:
    c = Converger(T)
    for t in range(5):
        assert step(c, {}, obs("a", asleep=True), float(t)) == []


def test_available_shows_measured_load_and_wake_times_over_the_estimates() -> None:
    c = Converger(T)
    listed = (AvailableModel("x", load_s=20.0, wake_s=0.5), AvailableModel("y", load_s=9.0))
    assert c.available(S, listed) == listed
    c.measured_load[(S, "x")] = 12.3456
    c.measured_wake[S] = 0.31
    assert c.available(S, listed) == (
        AvailableModel("x", load_s=12.346, wake_s=0.31),
        AvailableModel("y", load_s=9.0, wake_s=0.31),
    )
    assert c.available("other", listed) == listed


# -- servers that share a GPU -------------------------------------------------------------

A, B = "vllm-a", "vllm-b"


def on_gpu(model: str, asleep: bool, gpu: str = "GPU-1") -> Observed:
    state = Z if asleep else R
    return Observed(True, {model: state}, True, True, asleep, frozenset({gpu}))


def swap() -> dict[str, Desired]:
    return {
        "a": Desired("a", A, sleeping=True, path="/p"),
        "b": Desired("b", B, path="/p"),
    }


def test_a_wake_waits_until_the_other_server_on_its_gpu_is_asleep() -> None:
    # placement asks a to sleep and b to wake in one go: b's weights would not fit next to
    # a's (vLLM: out of memory at /wake_up), so b waits for a's drain and sleep call
    c = Converger(T)
    d = swap()
    assert c.tick(d, {A: on_gpu("a", False), B: on_gpu("b", True)}, 0.0) == []
    assert c.rest[A].phase is Rest.DRAINING
    (s,) = c.tick(d, {A: on_gpu("a", False), B: on_gpu("b", True)}, 2.0)
    assert (s.op, s.server) == (Op.SLEEP, A)
    assert c.tick(d, {A: on_gpu("a", False), B: on_gpu("b", True)}, 2.1) == []
    c.finished(s, None, 2.5)
    (w,) = c.tick(d, {A: on_gpu("a", True), B: on_gpu("b", True)}, 2.6)
    assert (w.op, w.server) == (Op.WAKE, B)


def test_servers_on_different_gpus_do_not_wait_for_each_other() -> None:
    c = Converger(T)
    acts = c.tick(swap(), {A: on_gpu("a", False), B: on_gpu("b", True, gpu="GPU-2")}, 0.0)
    assert [(a.op, a.server) for a in acts] == [(Op.WAKE, B)]


def test_a_load_waits_while_another_server_on_its_gpu_unloads() -> None:
    c = Converger(T)
    d = {
        "a": Desired("a", A, loaded=False, path="/p"),
        "b": Desired("b", B, path="/p"),
    }
    servers = {
        A: Observed(True, {"a": R}, True, False, None, frozenset({"GPU-1"})),
        B: Observed(True, {}, True, False, None, frozenset({"GPU-1"})),
    }
    assert c.tick(d, servers, 0.0) == []  # a drains first (drain_s 2)
    (u,) = c.tick(d, servers, 2.0)
    assert (u.op, u.server) == (Op.UNLOAD, A)
    c.finished(u, None, 2.5)
    servers[A] = Observed(True, {}, True, False, None, frozenset({"GPU-1"}))
    (ld,) = c.tick(d, servers, 2.6)
    assert (ld.op, ld.server, ld.model) == (Op.LOAD, B, "b")


def test_a_server_whose_sleep_failed_holds_no_one_back() -> None:
    # vLLM without dev mode answers /sleep 404: a permanent failure. Its weights stay, but
    # waiting for it would hold the other server forever: the wake goes ahead (and fails
    # for memory on a real GPU, reported like any failure)
    c = Converger(T)
    d = swap()
    servers = {A: on_gpu("a", False), B: on_gpu("b", True)}
    assert c.tick(d, servers, 0.0) == []
    (s,) = c.tick(d, servers, 2.0)
    c.finished(s, "404 Not Found", 2.1, permanent=True)
    (w,) = c.tick(d, servers, 2.2)
    assert (w.op, w.server) == (Op.WAKE, B)


def test_an_asleep_server_asked_to_unload_holds_no_one_back() -> None:
    # asleep, its weights are in host memory: an unload it cannot do (a vLLM base model)
    # must not stop another server of its GPU from loading
    c = Converger(T)
    d = {"a": Desired("a", A, loaded=False, path="/p"), "b": Desired("b", B, path="/p")}
    servers = {
        A: on_gpu("a", True),
        B: Observed(True, {}, True, False, None, frozenset({"GPU-1"})),
    }
    acts = c.tick(d, servers, 0.0)
    assert (Op.LOAD, B, "b") in [(a.op, a.server, a.model) for a in acts]


def test_a_failed_unload_stops_holding_the_others_until_it_is_retried() -> None:
    c = Converger(T)
    d = {"a": Desired("a", A, loaded=False, path="/p"), "b": Desired("b", B, path="/p")}
    servers = {
        A: Observed(True, {"a": R}, True, False, None, frozenset({"GPU-1"})),
        B: Observed(True, {}, True, False, None, frozenset({"GPU-1"})),
    }
    assert c.tick(d, servers, 0.0) == []
    (u,) = c.tick(d, servers, 2.0)
    c.finished(u, "500 busy", 2.1)
    (ld,) = c.tick(d, servers, 2.2)
    assert (ld.op, ld.server) == (Op.LOAD, B)
