"""Issue 9: a model's serving version is recorded at first sight and changes only by intent.

The pure parts (``decide.rollout``, ``decide.routes``), the API and ``aixds status`` view of
fail-open, and the ``ServingVersions`` loop on in-memory stores.
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType

import pytest
from fastapi.testclient import TestClient

from controlplane.decide import decide
from controlplane.decide.rollout import (
    promote,
    record_serving_versions,
    rollback,
    serving_fallback,
    start,
    unrecorded,
    version_counts,
)
from controlplane.fleet.leader import MemoryLock
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.intent import EMPTY_INTENT, Intent, Rollout, intent_to_doc
from controlplane.runtime.serving_version import ServingVersionMetrics, ServingVersions
from tests.fleetgen import fleet, replica
from tests.rollout_app import App, build
from tests.unit.test_rollout import NODE, NOW, POLICY, split

AUTH = {"authorization": "Bearer tok"}


def reps(version: str, n: int, state: ModelState = ModelState.READY) -> list[ObservedReplica]:
    """``n`` replicas of llama@``version``, one per node."""
    return [replica(f"{version}-{i}/a", models=(("llama", version, state),)) for i in range(n)]


def recorded(view: dict[str, ObservedReplica], intent: Intent = EMPTY_INTENT) -> Intent:
    return record_serving_versions(intent, version_counts(view, intent, NOW), NOW)


def test_first_sight_records_the_default_version_and_more_or_greater_versions_never_take_over() -> (
    None
):
    v1_only = fleet(*reps("v1", 2))
    it = recorded(v1_only)
    assert it.rollouts["llama"] == Rollout(stable="v1", started_at=NOW)
    # v2 comes up beside it: more replicas and a greater name, but no traffic
    blue_green = fleet(*reps("v1", 2), *reps("v2", 3))
    counts = version_counts(blue_green, it, NOW)
    assert unrecorded(it, counts) == {}
    assert intent_to_doc(record_serving_versions(it, counts, NOW + 1)) == intent_to_doc(it)
    assert split(decide(blue_green, it, NODE, NOW)) == {"llama@v1": 10_000}
    assert serving_fallback("llama", counts, it) is None
    # without the record, the default rule would have moved everything to v2
    assert split(decide(blue_green, Intent(), NODE, NOW)) == {"llama@v2": 10_000}
    (route,) = decide(blue_green, it, NODE, NOW).route_configs[0].models
    assert ("v2", "llama@v2") in route.versions  # x-model-version still reaches it


def test_first_sight_applies_the_old_rule_once_and_waits_for_a_serving_replica() -> None:
    tie = fleet(*reps("v1", 2), *reps("v2", 2))
    assert recorded(tie).rollouts["llama"].stable == "v2"  # ties: the greatest name
    loading = fleet(*reps("v1", 2, state=ModelState.LOADING))
    assert recorded(loading).rollouts == {}  # nothing serves yet: nothing to record
    warming = fleet(*reps("v1", 1, state=ModelState.WARMING))
    assert recorded(warming).rollouts["llama"].stable == "v1"
    # models already in intent keep what they have
    pinned = Intent(rollouts=MappingProxyType({"llama": Rollout(stable="v0")}))
    assert recorded(tie, pinned) is pinned


def test_a_canary_of_a_bigger_fleet_then_promote_and_rollback() -> None:
    view = fleet(*reps("v1", 2), *reps("v2", 3))
    it = recorded(fleet(*reps("v1", 2)))
    c = version_counts(view, it, NOW)
    it = start(it, "llama", "v2", 10, c, POLICY, NOW)
    assert split(decide(view, it, NODE, NOW)) == {"llama@v1": 9_000, "llama@v2": 1_000}
    it = promote(it, "llama", c, POLICY, NOW + 1)
    assert split(decide(view, it, NODE, NOW + 1)) == {"llama@v2": 10_000}
    it = rollback(it, "llama", "why", "manual", c, POLICY, NOW + 2)
    assert split(decide(view, it, NODE, NOW + 2)) == {"llama@v1": 10_000}


def test_fail_open_when_the_recorded_version_has_no_serving_replica() -> None:
    it = recorded(fleet(*reps("v1", 1)))
    gone = fleet(
        *reps("v1", 1, state=ModelState.LOADING), *reps("v2", 1), *reps("v3", 2), *reps("v4", 1)
    )
    c = version_counts(gone, it, NOW)
    assert serving_fallback("llama", c, it) == "v3"  # the old rule: most serving replicas
    assert split(decide(gone, it, NODE, NOW)) == {"llama@v3": 10_000}
    assert it.rollouts["llama"].stable == "v1"  # intent is not rewritten
    assert unrecorded(it, c) == {}
    # a canary in progress takes it all while the stable cannot serve
    before = version_counts(fleet(*reps("v1", 1), *reps("v2", 1)), it, NOW)
    canary = start(it, "llama", "v2", 10, before, POLICY, NOW)
    assert serving_fallback("llama", version_counts(gone, canary, NOW), canary) == "v2"
    assert split(decide(gone, canary, NODE, NOW)) == {"llama@v2": 10_000}
    # the recorded version serves again: traffic goes back to it
    back = fleet(*reps("v1", 1), *reps("v3", 2))
    assert serving_fallback("llama", version_counts(back, it, NOW), it) is None
    assert split(decide(back, it, NODE, NOW)) == {"llama@v1": 10_000}
    # nothing serves at all: no route, no fallback
    none = fleet(*reps("v1", 1, state=ModelState.LOADING))
    assert serving_fallback("llama", version_counts(none, it, NOW), it) is None


def fail_open_app() -> tuple[TestClient, App]:
    """llama recorded at v1 (pinned through the API), then both v1 replicas gone."""
    a = build()
    c = TestClient(a.app, raise_server_exceptions=False)
    assert c.post("/v1/rollouts/llama", json={"to": "v1"}, headers=AUTH).status_code == 200
    a.watcher.view = {k: o for k, o in a.watcher.view.items() if k not in ("n1/a", "n2/a")}
    return c, a


def test_the_api_shows_fail_open() -> None:
    c, a = fail_open_app()
    ro = c.get("/v1/rollouts/llama").json()
    assert (ro["stable"], ro["fallback"], ro["traffic"]) == ("v1", "v2", {"v2": 100.0})
    assert c.get("/v1/rollouts/qwen").json()["fallback"] is None
    assert json.loads(a.store.stored.doc or "")["rollouts"]["llama"]["stable"] == "v1"


def _loop(a: App, owner: str = "cp-1") -> tuple[ServingVersions, MemoryLock]:
    lock = MemoryLock(owner)
    sv = ServingVersions(a.service, a.intents, a.watcher, lock, ServingVersionMetrics(a.registry))
    return sv, lock


def metric(a: App, line: str) -> str:
    text = TestClient(a.app).get("/metrics").text
    (found,) = [x for x in text.splitlines() if x.startswith(line)]
    return found.rsplit(" ", 1)[1]


async def test_the_loop_records_once_and_only_while_holding_the_lock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    a = build()
    sv, lock = _loop(a)
    lock.holder_id = "cp-2"  # another replica acts
    await sv.tick()
    assert a.store.stored.revision == 0 and not sv.leader
    lock.holder_id = None
    await sv.tick()
    assert sv.leader and a.store.stored.revision == 1
    doc = json.loads(a.store.stored.doc or "")
    assert {m: r["stable"] for m, r in doc["rollouts"].items()} == {"llama": "v1", "qwen": "q1"}
    assert "serving version of llama recorded at first sight: v1 (intent revision 1)" in caplog.text
    await sv.tick()
    assert a.store.stored.revision == 1  # nothing new: nothing written
    assert metric(a, 'aixds_rollout_changes_total{action="record",result="ok"}') == "1.0"
    assert metric(a, "aixds_serving_version_leader") == "1.0"


async def test_the_loop_waits_for_a_synced_view_and_defers_on_a_conflict() -> None:
    a = build()
    sv, _ = _loop(a)
    a.watcher.synced_once = False
    await sv.tick()
    assert a.store.stored.revision == 0
    a.watcher.synced_once = True
    # someone else wrote meanwhile: the judged revision is stale, nothing is overwritten
    other = json.dumps({"schema": 1, "rollouts": {"llama": {"stable": "v2"}}})
    await a.store.write(0, other)
    await sv.tick()
    assert a.store.stored.revision == 1 and a.store.stored.doc == other
    await a.intents.refresh()
    await sv.tick()  # now only qwen is new
    doc = json.loads(a.store.stored.doc or "")
    assert {m: r["stable"] for m, r in doc["rollouts"].items()} == {"llama": "v2", "qwen": "q1"}


async def test_the_loop_reports_fail_open_in_a_metric_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, a = fail_open_app()
    sv, _ = _loop(a)
    await sv.tick()
    assert sv.fallbacks == {"llama": "v2"}
    assert metric(a, 'aixds_serving_version_fallback{model="llama"}') == "1.0"
    assert metric(a, 'aixds_serving_version_fallback{model="qwen"}') == "0.0"
    assert "FAIL OPEN: llama's stable version v1 has no serving replica" in caplog.text
    await sv.tick()
    assert caplog.text.count("FAIL OPEN") == 1  # once when it starts
    a.watcher.view = build().watcher.view  # v1 is back
    await sv.tick()
    assert sv.fallbacks == {}
    assert metric(a, 'aixds_serving_version_fallback{model="llama"}') == "0.0"
    assert "fail open of llama ended: its stable version v1 serves" in caplog.text
