"""Rollout state changes (pure), draining phases in ``decide()``, and the intent codec."""

from __future__ import annotations

import json
import math
from types import MappingProxyType

import pytest

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.plan import CANARY_OUTLIER
from controlplane.decide.rollout import (
    ErrorKind,
    Phase,
    RolloutError,
    RolloutPolicy,
    VersionCount,
    abort,
    current_stable,
    next_deadline,
    phase,
    promote,
    rollback,
    set_percent,
    start,
    version_counts,
)
from controlplane.fleet.model import GpuStats, ModelState
from controlplane.intent import (
    DrainingVersion,
    Intent,
    IntentError,
    RollbackRecord,
    Rollout,
    intent_from_doc,
    intent_to_doc,
)
from controlplane.ir import OutlierIR, Plan
from tests.fleetgen import fleet, replica

NOW = 50.0
NODE = EnvoyNode(role="edge", region="us", zone="us-a", listen_port=10000)
POLICY = RolloutPolicy(min_ready=1, drain_settle_s=1.0, drain_s=10.0)
V1 = (("llama", "v1", ModelState.READY),)
V2 = (("llama", "v2", ModelState.READY),)

FLEET = fleet(
    replica("n1/a", models=V1),
    replica("n2/a", models=V1),
    replica("n3/a", models=V2),
    replica("n4/a", models=(("llama", "v3", ModelState.WARMING),)),
    replica("n5/a", models=(("llama", "v4", ModelState.LOADING),)),
    replica("n6/a", models=V2, gpus=(GpuStats(index=0, faulty=True),)),
)


def counts(intent: Intent | None = None) -> dict[str, dict[str, VersionCount]]:
    return version_counts(FLEET, intent or Intent(), NOW)


def split(plan: Plan, model: str = "llama") -> dict[str, int]:
    (route,) = [m for m in plan.route_configs[0].models if m.model == model]
    return {w.cluster: w.weight for w in route.clusters}


def health(plan: Plan, cluster: str) -> set[str]:
    (c,) = [c for c in plan.clusters if c.name == cluster]
    return {e.health.value for e in c.endpoints}


def test_version_counts_and_default_stable() -> None:
    c = version_counts(FLEET, Intent(), NOW)
    v = c["llama"]
    assert (v["v1"].total, v["v1"].serving, v["v1"].ready) == (2, 2, 2)
    assert (v["v2"].total, v["v2"].serving, v["v2"].ready) == (2, 1, 1)  # one faulty GPU
    assert (v["v3"].serving, v["v3"].ready) == (1, 0)  # warming serves, is not ready
    assert (v["v4"].total, v["v4"].serving) == (1, 0)  # loading
    assert current_stable("llama", c, Intent()) == "v1"  # most serving replicas


def test_canary_then_promote_drains_old_stable_then_removes_it() -> None:
    it = start(Intent(), "llama", "v2", 10.0, counts(), POLICY, NOW)
    r = it.rollouts["llama"]
    assert (r.stable, r.canary, r.canary_percent, r.started_at) == ("v1", "v2", 10.0, NOW)
    plan = decide(FLEET, it, NODE, NOW)
    assert split(plan) == {"llama@v1": 9000, "llama@v2": 1000}
    # a canary never ejects all its hosts: its errors must reach the rollback guard
    outlier = {c.name: c.outlier for c in plan.clusters}
    assert outlier["llama@v2"] == CANARY_OUTLIER and outlier["llama@v1"] == OutlierIR()
    assert not CANARY_OUTLIER.always_eject_one_host and CANARY_OUTLIER.max_ejection_percent < 100

    it = set_percent(it, "llama", 25, counts(), POLICY, NOW + 1)
    assert it.rollouts["llama"].canary_percent == 25.0

    it = promote(it, "llama", counts(), POLICY, NOW + 2)
    r = it.rollouts["llama"]
    assert (r.stable, r.canary, r.previous) == ("v2", "", "v1")
    d = it.draining_versions["llama"]["v1"]
    assert (d.drain_at, d.remove_at) == (NOW + 3, NOW + 13)
    # settling: routes moved away at once, endpoints still healthy (in-flight requests)
    settling = decide(FLEET, it, NODE, NOW + 2.5)
    assert split(settling) == {"llama@v2": 10_000}
    assert health(settling, "llama@v1") == {"HEALTHY"}
    (route,) = settling.route_configs[0].models
    assert ("v1", "llama@v1") in route.versions  # still reachable by x-model-version
    # draining: endpoints DRAINING, no header route
    draining = decide(FLEET, it, NODE, NOW + 5)
    assert health(draining, "llama@v1") == {"DRAINING"}
    assert ("v1", "llama@v1") not in draining.route_configs[0].models[0].versions
    assert draining.validate() == []
    # removed: no cluster at all
    removed = decide(FLEET, it, NODE, NOW + 13)
    assert "llama@v1" not in {c.name for c in removed.clusters}
    assert removed.validate() == []
    assert next_deadline(it, NOW + 2) == NOW + 3
    assert next_deadline(it, NOW + 3) == NOW + 13
    assert next_deadline(it, NOW + 13) == math.inf


def test_blue_green_switch_and_rollback_to_previous() -> None:
    it = start(Intent(), "llama", "v2", None, counts(), POLICY, NOW)
    assert it.rollouts["llama"] == Rollout(stable="v2", previous="v1", started_at=NOW)
    assert split(decide(FLEET, it, NODE, NOW)) == {"llama@v2": 10_000}
    assert "v1" in it.draining_versions["llama"]

    back = rollback(it, "llama", "p99 too high", "manual", counts(it), POLICY, NOW + 20)
    r = back.rollouts["llama"]
    assert (r.stable, r.previous) == ("v1", "v2")
    assert r.last_rollback == RollbackRecord("v2", "v1", "p99 too high", "manual", NOW + 20)
    # v1 takes traffic again with healthy endpoints, v2 drains
    assert "v1" not in back.draining_versions.get("llama", {})
    plan = decide(FLEET, back, NODE, NOW + 20)
    assert split(plan) == {"llama@v1": 10_000}
    assert health(plan, "llama@v1") == {"HEALTHY"}
    assert set(back.draining_versions["llama"]) == {"v2"}


def test_canary_rollback_records_reason_and_abort_does_not() -> None:
    it = start(Intent(), "llama", "v2", 10.0, counts(), POLICY, NOW)
    rb = rollback(it, "llama", "errors", "auto", counts(it), POLICY, NOW + 1)
    r = rb.rollouts["llama"]
    assert (r.stable, r.canary, r.canary_percent) == ("v1", "", 0.0)
    assert r.last_rollback == RollbackRecord("v2", "v1", "errors", "auto", NOW + 1)
    assert split(decide(FLEET, rb, NODE, NOW + 1)) == {"llama@v1": 10_000}

    ab = abort(it, "llama", counts(it), POLICY, NOW + 1)
    assert ab.rollouts["llama"].last_rollback is None
    assert ab.rollouts["llama"].canary == ""
    assert "v2" in ab.draining_versions["llama"]


def test_restarting_a_drained_version_takes_it_out_of_draining() -> None:
    it = start(Intent(), "llama", "v2", 10.0, counts(), POLICY, NOW)
    it = abort(it, "llama", counts(it), POLICY, NOW + 1)
    it = start(it, "llama", "v2", 5.0, counts(it), POLICY, NOW + 2)
    assert "llama" not in it.draining_versions
    assert split(decide(FLEET, it, NODE, NOW + 5)) == {"llama@v1": 9500, "llama@v2": 500}


S, P = POLICY, NOW
NOT_READY, NOTHING = "not_enough_ready_replicas", "nothing_to_roll_back"


@pytest.mark.parametrize(
    ("call", "kind", "code"),
    [
        (lambda it: start(it, "qwen", "v1", None, counts(), S, P), "not_found", "unknown_model"),
        (lambda it: start(it, "llama", "v9", None, counts(), S, P), "not_found", "unknown_version"),
        (lambda it: start(it, "llama", "v3", 5, counts(), S, P), "not_ready", NOT_READY),
        (lambda it: start(it, "llama", "v4", None, counts(), S, P), "not_ready", NOT_READY),
        (lambda it: promote(it, "llama", counts(), S, P), "conflict", "no_canary"),
        (lambda it: set_percent(it, "llama", 5, counts(), S, P), "conflict", "no_canary"),
        (lambda it: rollback(it, "llama", "", "manual", counts(), S, P), "conflict", NOTHING),
        (lambda it: abort(it, "nope", counts(), S, P), "not_found", "unknown_model"),
    ],
)  # fmt: skip
def test_refusals_name_the_problem(call: object, kind: str, code: str) -> None:
    with pytest.raises(RolloutError) as e:
        call(Intent())  # type: ignore[operator]
    assert (e.value.kind.value, e.value.code) == (kind, code)
    assert e.value.detail


def test_min_ready_guard_and_rollout_in_progress() -> None:
    strict = RolloutPolicy(min_ready=2)
    with pytest.raises(RolloutError) as e:
        start(Intent(), "llama", "v2", None, counts(), strict, NOW)  # v2 has 1 ready
    assert e.value.kind is ErrorKind.NOT_READY and "1 ready" in e.value.detail
    it = start(Intent(), "llama", "v2", 10, counts(), POLICY, NOW)
    with pytest.raises(RolloutError) as e:
        start(it, "llama", "v3", 10, counts(), POLICY, NOW)
    assert e.value.code == "rollout_in_progress"
    # the same canary again with a percent just sets it
    assert (
        start(it, "llama", "v2", 30, counts(), POLICY, NOW).rollouts["llama"].canary_percent == 30
    )
    with pytest.raises(RolloutError) as e:
        set_percent(it, "llama", 101, counts(), POLICY, NOW)
    assert e.value.kind is ErrorKind.INVALID


def test_pinning_the_current_stable_is_idempotent() -> None:
    it = start(Intent(), "llama", "v1", None, counts(), POLICY, NOW)
    assert it.rollouts["llama"].stable == "v1" and not it.draining_versions
    again = start(it, "llama", "v1", None, counts(it), POLICY, NOW + 5)
    assert intent_to_doc(again) == intent_to_doc(it)


def test_draining_is_ignored_when_nothing_else_can_serve() -> None:
    only_v1 = fleet(replica("n1/a", models=V1))
    it = Intent(
        rollouts=MappingProxyType({"llama": Rollout(stable="v2", previous="v1")}),
        draining_versions=MappingProxyType(
            {"llama": MappingProxyType({"v1": DrainingVersion(NOW - 5, NOW + 5)})}
        ),
    )
    plan = decide(only_v1, it, NODE, NOW)
    assert split(plan) == {"llama@v1": 10_000}
    assert health(plan, "llama@v1") == {"HEALTHY"}
    assert phase(it.draining_versions["llama"]["v1"], NOW) is Phase.DRAINING


def test_removed_versions_no_replica_has_are_forgotten() -> None:
    it = start(Intent(), "llama", "v2", None, counts(), POLICY, NOW)
    assert "v1" in it.draining_versions["llama"]
    gone = fleet(replica("n3/a", models=V2))
    later = NOW + 20  # past remove_at, records still fresh
    it = start(it, "llama", "v2", None, version_counts(gone, it, later), POLICY, later)
    assert "llama" not in it.draining_versions


def test_intent_codec_round_trip_and_errors() -> None:
    it = start(Intent(), "llama", "v2", 12.5, counts(), POLICY, NOW)
    it = rollback(it, "llama", "why", "auto", counts(it), POLICY, NOW + 1)
    doc = json.loads(json.dumps(intent_to_doc(it)))
    back = intent_from_doc(doc, 7)
    assert back.revision == 7
    assert intent_to_doc(back) == intent_to_doc(it)
    assert back.rollouts == it.rollouts
    for bad in (
        [],
        {"schema": 2},
        {"schema": 1, "rollouts": {"llama": {"stable": ""}}},
        {"schema": 1, "rollouts": {"llama": {"stable": "v1", "canary_percent": 101}}},
        {"schema": 1, "rollouts": {"llama": {"stable": "v1", "last_rollback": {"trigger": "x"}}}},
        {"schema": 1, "draining_versions": {"llama": {"v1": {"drain_at": "soon"}}}},
        {"schema": 1, "drained": "n1/a"},
    ):
        with pytest.raises(IntentError):
            intent_from_doc(bad, 1)
