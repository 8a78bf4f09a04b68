"""The executor's state machine (``Converger``) stepped through fake time, no I/O."""

from __future__ import annotations

import itertools
import math

from controlplane.agent.placement.converge import Action, Converger, ExecTiming, Observed, Op, Phase
from controlplane.agent.placement.desired import Desired
from controlplane.fleet.model import ModelInfo, ModelState

R, L, W, U = ModelState.READY, ModelState.LOADING, ModelState.WARMING, ModelState.UNLOADING
T = ExecTiming(warmup_s=5, drain_s=2, appear_s=30, backoff_min_s=1, backoff_max_s=8, jitter=0)
S = "vllm-8000"


def up(*models: str, can_load: bool = True) -> Observed:
    return Observed(True, {m: R for m in models}, can_load)


DOWN = Observed(False, {}, True)


def want(model: str = "lora", **kw: object) -> dict[str, Desired]:
    return {model: Desired(model=model, server=S, path="/a/v1", **kw)}  # type: ignore[arg-type]


def test_load_then_warm_then_ready_with_the_desired_version() -> None:
    c = Converger(T)
    d = want(version="v2")
    (a,) = c.tick(d, {S: up("base")}, 0.0)
    assert a == Action(Op.LOAD, S, "lora", d["lora"])
    assert c.published(S, (ModelInfo("base", "default", R),)) == (
        ModelInfo("base", "default", R),
        ModelInfo("lora", "v2", L),  # not listed by the server yet: published loading
    )
    assert c.tick(d, {S: up("base")}, 0.5) == []  # one call at a time
    c.finished(a, None, 1.0)
    listed = (ModelInfo("lora", "default", R),)
    assert c.tick(d, {S: up("base", "lora")}, 2.0) == []
    assert c.published(S, listed) == (ModelInfo("lora", "v2", W),)
    c.tick(d, {S: up("base", "lora")}, 6.1)
    assert c.tracks[(S, "lora")].phase is Phase.READY
    assert c.published(S, listed) == (ModelInfo("lora", "v2", R),)


def test_failures_back_off_exponentially_and_are_counted() -> None:
    c = Converger(T)
    d = want()
    starts = []
    now = 0.0
    while now < 40:
        for a in c.tick(d, {S: up()}, now):
            starts.append(now)
            c.finished(a, "HTTP 500: boom", now)
        now = round(now + 0.1, 1)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubling, capped at backoff_max_s
    assert c.failures_total == len(starts)
    t = c.tracks[(S, "lora")]
    assert t.phase is Phase.FAILED and t.error == "HTTP 500: boom"
    assert c.published(S, ()) == ()  # a failed load is not published as a model...
    (f,) = c.failures(S)  # ...but as a failure
    assert (f.name, f.op, f.error, f.failures, f.permanent) == (
        "lora", "load", "HTTP 500: boom", len(starts), False,
    )  # fmt: skip
    assert c.failures("other-server") == ()


def test_a_model_already_there_is_adopted_without_a_call() -> None:
    c = Converger(T)
    assert c.tick(want(version="v9"), {S: up("lora")}, 0.0) == []
    assert c.tracks[(S, "lora")].phase is Phase.READY
    assert c.published(S, (ModelInfo("lora", "default", R),)) == (ModelInfo("lora", "v9", R),)


def test_unload_drains_first_then_calls_once() -> None:
    c = Converger(T)
    d = want(loaded=False)
    assert c.tick(d, {S: up("lora")}, 0.0) == []
    assert c.published(S, (ModelInfo("lora", "default", R),)) == (ModelInfo("lora", "default", U),)
    assert c.tick(d, {S: up("lora")}, 1.9) == []
    (a,) = c.tick(d, {S: up("lora")}, 2.0)
    assert a.op is Op.UNLOAD
    c.finished(a, None, 2.5)
    # a probe taken while the call ran still lists it: published as unloading, not ready
    assert c.published(S, (ModelInfo("lora", "default", R),)) == (ModelInfo("lora", "default", U),)
    assert c.tick(d, {S: up()}, 3.0) == []
    assert c.tracks[(S, "lora")].phase is Phase.GONE
    assert c.published(S, ()) == ()


def test_a_removed_field_stops_management_without_unloading() -> None:
    c = Converger(T)
    c.tick(want(), {S: up("lora")}, 0.0)
    assert c.tick({}, {S: up("lora")}, 1.0) == []
    assert c.tracks == {}
    assert c.published(S, (ModelInfo("lora", "default", R),)) == (ModelInfo("lora", "default", R),)


def test_removed_while_in_flight_ends_when_the_call_returns() -> None:
    c = Converger(T)
    (a,) = c.tick(want(), {S: up()}, 0.0)
    c.tick({}, {S: up()}, 0.5)
    assert (S, "lora") in c.tracks
    c.finished(a, None, 1.0)
    assert c.tracks == {}


def test_nothing_is_called_on_an_unreachable_or_unprobed_server() -> None:
    c = Converger(T)
    assert c.tick(want(), {S: DOWN}, 0.0) == []
    assert c.tick(want(), {S: None}, 0.0) == []


def test_a_model_lost_in_a_server_restart_is_loaded_again() -> None:
    c = Converger(T)
    c.tick(want(), {S: up("lora")}, 0.0)
    assert c.tick(want(), {S: DOWN}, 1.0) == []
    (a,) = c.tick(want(), {S: up()}, 2.0)
    assert a.op is Op.LOAD


def test_a_new_path_reloads_what_this_agent_loaded() -> None:
    c = Converger(T)
    (a,) = c.tick(want(), {S: up()}, 0.0)
    c.finished(a, None, 0.0)
    c.tick(want(), {S: up("lora")}, 6.0)
    d2 = {"lora": Desired(model="lora", server=S, path="/a/v2")}
    (b,) = c.tick(d2, {S: up("lora")}, 7.0)
    assert b.op is Op.RELOAD and b.want.path == "/a/v2"


def test_a_kind_without_loader_fails_once_until_the_entry_changes() -> None:
    c = Converger(T)
    tgi = {S: up(can_load=False)}
    for now in (0.0, 1.0, 100.0):
        assert c.tick(want(), tgi, now) == []
    assert c.failures_total == 1
    t = c.tracks[(S, "lora")]
    assert math.isinf(t.retry_at) and "cannot load" in t.error
    (f,) = c.failures(S)
    assert f.permanent and "cannot load" in f.error


def test_a_permanent_loader_error_waits_for_a_new_entry() -> None:
    c = Converger(T)
    d = {"lora": Desired(model="lora", server=S)}
    (a,) = c.tick(d, {S: up()}, 0.0)
    c.finished(a, "needs 'path'", 0.0, permanent=True)
    assert c.tick(d, {S: up()}, 1000.0) == []
    (b,) = c.tick(want(), {S: up()}, 1001.0)  # fixed entry: tried at once
    assert b.op is Op.LOAD
    assert c.failures(S) == ()  # a new instruction: the old failure is gone


def test_server_defaults_to_the_only_loader_and_is_required_otherwise() -> None:
    c = Converger(T)
    d = {"m": Desired(model="m")}
    (a,) = c.tick(d, {S: up(), "tgi-80": up(can_load=False)}, 0.0)
    assert a.server == S
    c2 = Converger(T)
    assert c2.tick(d, {S: up(), "triton-8000": up()}, 0.0) == []
    assert "exactly one" in c2.problems["m"]
    c3 = Converger(T)
    assert c3.tick({"m": Desired(model="m", server="nope")}, {S: up()}, 0.0) == []
    assert "nope" in c3.problems["m"]


def test_loaded_but_never_listed_is_a_failure() -> None:
    c = Converger(T)
    (a,) = c.tick(want(), {S: up()}, 0.0)
    c.finished(a, None, 0.0)
    assert c.tick(want(), {S: up()}, 29.0) == []
    c.tick(want(), {S: up()}, 31.0)
    t = c.tracks[(S, "lora")]
    assert t.phase is Phase.FAILED and "does not list it" in t.error


def test_failed_unload_keeps_draining_and_retries() -> None:
    c = Converger(T)
    d = want(loaded=False)
    c.tick(d, {S: up("lora")}, 0.0)
    (a,) = c.tick(d, {S: up("lora")}, 2.0)
    c.finished(a, "HTTP 500", 2.0)
    assert c.published(S, (ModelInfo("lora", "default", R),))[0].state is U
    assert c.tick(d, {S: up("lora")}, 2.5) == []
    (b,) = c.tick(d, {S: up("lora")}, 3.0)
    assert b.op is Op.UNLOAD


def test_backoff_jitter_stays_within_its_fraction() -> None:
    c = Converger(ExecTiming(backoff_min_s=10, backoff_max_s=100, jitter=0.1))
    values = [c.backoff(1) for _ in range(200)]
    assert all(9.0 <= v <= 11.0 for v in values) and len(set(values)) > 100
