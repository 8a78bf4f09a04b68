"""The dashboard's snapshot (``api.ui_snapshot``), timeline (``api.ui_timeline``) and feed
(``api.ui_feed``): pure functions on fleet state, checked on hand-made fleets."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from controlplane.api.ui_feed import UiFeed
from controlplane.api.ui_snapshot import GroupPlan, UiInputs, snapshot
from controlplane.api.ui_timeline import Timeline, changes, replicas
from controlplane.decide import EnvoyNode, decide
from controlplane.fleet.model import GpuStats, ModelState
from controlplane.intent import Intent, RollbackRecord, Rollout
from tests.fleetgen import fleet, replica

NOW = 50.0


def _fleet() -> dict[str, Any]:
    return fleet(
        replica("gpu-1/vllm-a", port=8001, waiting=3, running=2, kv=0.5, speed=0.8),
        replica("gpu-2/vllm-b", zone="us-b", port=8002, gpus=(GpuStats(0, util_gpu=0.7),)),
        replica("gpu-3/vllm-c", region="eu", zone="eu-a", port=8003),
    )


def _inputs(
    view: dict[str, Any] | None = None, intent: Intent | None = None, **kw: Any
) -> UiInputs:
    view = _fleet() if view is None else view
    intent = intent or Intent()
    node = EnvoyNode(role="edge", region="us", zone="us-a")
    plan = decide(view, intent, node, NOW)
    groups = {"edge/us/127.0.0.1:10000": GroupPlan("edge", "us", "us-a", plan, 10.0)}
    return UiInputs(now=NOW, view=view, intent=intent, groups=groups, **kw)


def test_fleet_tree_is_regions_zones_nodes_replicas_with_load_gpu_and_eds() -> None:
    snap = snapshot(_inputs())
    json.dumps(snap)  # JSON-ready
    assert [r["name"] for r in snap["regions"]] == ["eu", "us"]
    us = next(r for r in snap["regions"] if r["name"] == "us")
    assert [z["name"] for z in us["zones"]] == ["us-a", "us-b"]
    assert [n["name"] for n in us["zones"][0]["nodes"]] == ["gpu-1"]
    reps = replicas(snap)
    a = reps["gpu-1/vllm-a"]
    assert (a["queue_waiting"], a["running"], a["kv_cache"], a["speed"]) == (3, 2, 0.5, 0.8)
    assert a["models"] == [{"name": "llama", "version": "v1", "state": "ready"}]
    assert reps["gpu-2/vllm-b"]["gpus"][0]["util"] == 0.7
    eds = a["eds"]["edge/us/127.0.0.1:10000"]
    assert eds[0]["cluster"] == "llama@v1" and eds[0]["health"] == "HEALTHY"
    assert eds[0]["priority"] == 0 and eds[0]["weight"] >= 1
    # the eu replica is a lower priority for the us Envoy
    assert reps["gpu-3/vllm-c"]["eds"]["edge/us/127.0.0.1:10000"][0]["priority"] > 0


def test_models_carry_versions_routes_rollout_and_placement() -> None:
    snap = snapshot(_inputs())
    (m,) = snap["models"]
    assert m["model"] == "llama"
    assert m["rollout"]["stable"] == "v1" and m["rollout"]["canary"] is None
    assert m["versions"][0]["traffic_percent"] == 100.0
    assert m["placement"]["pinned"] is None
    (g,) = snap["groups"]
    assert g["routes"]["llama"] == {"llama@v1": 100.0}
    assert g["envoys"] == [] and g["nacks"] == 0


def test_share_of_traffic_comes_from_recent_lrs_reports_per_model() -> None:
    def report(at: float, issued: dict[int, int]) -> dict[str, Any]:
        return {
            "node_id": "edge-1",
            "cluster": "llama@v1",
            "at": at,
            "endpoints": [{"address": f"127.0.0.1:{p}", "issued": n} for p, n in issued.items()],
        }

    recent = report(NOW - 1, {8001: 30, 8002: 10})
    old = report(NOW - 60, {8003: 1000})  # outside the window: ignored
    reps = replicas(snapshot(_inputs(loads=[recent, old])))
    assert reps["gpu-1/vllm-a"]["share"] == {"llama": 75.0}
    assert reps["gpu-2/vllm-b"]["share"] == {"llama": 25.0}
    assert reps["gpu-3/vllm-c"]["share"] == {}


def test_region_states_and_empty_regions_are_shown() -> None:
    snap = snapshot(_inputs(regions={"us": "live", "eu": "demoted", "ap": "lost"}))
    states = {r["name"]: r["state"] for r in snap["regions"]}
    assert states == {"ap": "lost", "eu": "demoted", "us": "live"}
    assert next(r for r in snap["regions"] if r["name"] == "ap")["zones"] == []
    local = snapshot(_inputs(regions={"us": "live", "eu": "live"}, local_region="us"))
    assert [r["name"] for r in local["regions"]] == ["us", "eu"]


def _texts(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [e["text"] for e in changes(before, after)]


def test_timeline_names_rollout_start_promote_and_rollback() -> None:
    view = fleet(
        replica("gpu-1/vllm-a", port=8001),
        replica("gpu-2/vllm-b", port=8002, models=(("llama", "v2", ModelState.READY),)),
    )
    base = Intent(rollouts=MappingProxyType({"llama": Rollout(stable="v1")}))
    s0 = snapshot(_inputs(view, base))
    canary = replace(
        base, revision=1, rollouts=MappingProxyType({"llama": Rollout("v1", "v2", 10.0)})
    )
    s1 = snapshot(_inputs(view, canary))
    assert _texts(s0, s1) == ["llama: canary v2 started at 10% (stable v1)"]
    more = replace(
        base, revision=2, rollouts=MappingProxyType({"llama": Rollout("v1", "v2", 50.0)})
    )
    s2 = snapshot(_inputs(view, more))
    assert _texts(s1, s2) == ["llama: canary v2 at 50% (was 10%)"]
    promoted = replace(
        base, revision=3, rollouts=MappingProxyType({"llama": Rollout("v2", previous="v1")})
    )
    s3 = snapshot(_inputs(view, promoted))
    assert _texts(s2, s3) == ["llama: promoted v2 (was v1)"]
    back = Rollout("v1", previous="", last_rollback=RollbackRecord("v2", "v1", "p99", "auto", 49))
    s4 = snapshot(
        _inputs(view, replace(base, revision=4, rollouts=MappingProxyType({"llama": back})))
    )
    (ev,) = changes(s3, s4)
    assert ev["kind"] == "rollback" and ev["level"] == "error"
    assert ev["text"] == "llama: rolled back v2 -> v1 (auto): p99"
    assert changes(None, s0) == []
    unsynced = snapshot(_inputs({}, base, synced=False))
    assert changes(unsynced, s0) == []  # a control plane that just read Redis: no news
    assert [e["kind"] for e in changes(snapshot(_inputs({}, base)), s0)] == ["replica"] * 2
    assert changes(s4, s4) == []


def test_timeline_names_drains_faults_replicas_regions_and_nacks() -> None:
    s0 = snapshot(_inputs(regions={"us": "live", "eu": "live"}))
    sick = _fleet()
    sick["gpu-2/vllm-b"] = replica(
        "gpu-2/vllm-b",
        zone="us-b",
        port=8002,
        gpus=(GpuStats(0, faulty=True, fault_reason="xid 79"),),
    )
    del sick["gpu-3/vllm-c"]
    gone = sick["gpu-1/vllm-a"]
    sick["gpu-1/vllm-a"] = replace(gone, record=replace(gone.record, lost=(("llama", "v1"),)))
    nack = {"type": "CDS", "version": "abc", "node_id": "edge-1", "error_detail": "bad", "at": 49.0}
    s1 = snapshot(
        _inputs(
            sick,
            Intent(revision=1, drained=frozenset({"gpu-1"})),
            regions={"us": "live", "eu": "lost"},
            xds={"streams": [], "nacks": {"edge/us/127.0.0.1:10000": [nack]}},
        )
    )
    events = changes(s0, s1)
    assert {e["kind"] for e in events} == {"drain", "nack", "fault", "replica", "region"}
    texts = [e["text"] for e in events]
    assert "drain gpu-1: no new requests" in texts
    assert "gpu-2/vllm-b: GPU 0 faulty (xid 79): leaves EDS" in texts
    assert "replica gpu-3/vllm-c left (record expired or region lost)" in texts
    assert "region eu: live -> lost" in texts
    assert "gpu-1/vllm-a: server stopped answering (llama@v1)" in texts
    assert any(t.startswith("NACK from edge-1") for t in texts)
    # and back
    back = [e["text"] for e in changes(s1, s0)]
    assert "undrain gpu-1: takes requests again" in back
    assert "gpu-2/vllm-b: GPU 0 fault cleared" in back
    assert "replica gpu-3/vllm-c joined" in back
    assert "gpu-1/vllm-a: server answers again" in back


def test_timeline_ring_is_bounded_and_newest_first() -> None:
    t = Timeline(maxlen=3)
    t.extend([{"at": float(i), "kind": "x", "level": "info", "text": str(i)} for i in range(5)])
    assert len(t) == 3
    assert [e["text"] for e in t.newest(2)] == ["4", "3"]


async def test_feed_publishes_events_and_wakes_waiters() -> None:
    feed = UiFeed(interval_s=0.01)
    snaps = [snapshot(_inputs()), snapshot(_inputs(intent=Intent(drained=frozenset({"gpu-1"}))))]

    async def build() -> dict[str, Any]:
        return snaps.pop(0)

    await feed.refresh(build)
    seq = feed.seq
    waiter = asyncio.create_task(feed.wait_newer(seq, 2.0))
    await asyncio.sleep(0)
    await feed.refresh(build)
    assert await waiter is True
    msg = feed.message()
    assert msg["drains"] == ["gpu-1"]
    assert [e["kind"] for e in msg["events"]] == ["drain"]
    assert await feed.wait_newer(feed.seq, 0.01) is False
    await feed.close()
    assert await feed.wait_newer(feed.seq, 5.0) is False
