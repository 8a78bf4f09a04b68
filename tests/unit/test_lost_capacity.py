"""A server that stops answering while its agent runs: the agent publishes what it served
(``lost``), the control plane keeps it as an UNHEALTHY endpoint of those versions, so
Envoy's priority health counts the missing capacity (spill-over to the next region)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.agent.publisher import (
    LostModels,
    Target,
    Timing,
    build_record,
    worth_publishing,
)
from controlplane.agent.servers.adapter import UNREACHABLE, Probe
from controlplane.decide import EnvoyNode, decide
from controlplane.fleet.codec import RecordError, decode_record, encode_record
from controlplane.fleet.model import ModelInfo, ModelState, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import Health
from tests.fleetgen import fleet, replica

NODE = EnvoyNode(role="edge", region="us", zone="us-a")
NOW = 50.0

READY = Probe(
    reachable=True,
    models=(
        ModelInfo("llama", "v1", ModelState.READY),
        ModelInfo("qwen", "v2", ModelState.WARMING),
        ModelInfo("big", "v1", ModelState.LOADING),
    ),
)


def test_the_agent_publishes_what_a_silent_server_served_for_the_hold_only() -> None:
    lost = LostModels(hold_s=10.0)
    assert lost.apply(UNREACHABLE, 0.0) == UNREACHABLE  # never answered: nothing to say
    assert lost.apply(READY, 1.0) == READY
    # loading models were never capacity: only ready and warming ones are lost
    assert lost.apply(UNREACHABLE, 2.0).lost == (("llama", "v1"), ("qwen", "v2"))
    assert lost.apply(UNREACHABLE, 10.9).lost == (("llama", "v1"), ("qwen", "v2"))
    assert lost.apply(UNREACHABLE, 11.0).lost == ()
    # an answer with no models forgets them (unloaded, not lost)
    lost.apply(READY, 20.0)
    assert lost.apply(Probe(reachable=True), 21.0).lost == ()
    assert lost.apply(UNREACHABLE, 22.0).lost == ()
    assert LostModels(hold_s=0.0).apply(READY, 1.0) == READY
    off = LostModels(hold_s=0.0)
    off.apply(READY, 1.0)
    assert off.apply(UNREACHABLE, 1.0).lost == ()
    assert Timing().lost_hold_s == 300.0


def test_lost_is_published_at_once_and_round_trips_through_the_codec() -> None:
    gone = replace(UNREACHABLE, lost=(("llama", "v1"),))
    assert worth_publishing((UNREACHABLE, ()), (gone, ()))
    target = Target(
        replica_id="n1/r1",
        node="n1",
        region="us",
        zone="us-a",
        address="127.0.0.1",
        port=8000,
        kind=replica("n1/r1").record.server_kind,
    )
    rec = build_record(target, gone, (), 5.0)
    assert rec.lost == (("llama", "v1"),) and rec.models == ()
    assert decode_record(encode_record(rec)) == rec
    assert '"lost"' not in encode_record(replace(rec, lost=()))  # optional key
    bad = encode_record(rec).replace('"version":"v1"', '"version":3')
    with pytest.raises(RecordError):
        decode_record(bad)


def silent(rid: str, port: int, expires_at: float = 100.0) -> ObservedReplica:
    """A replica whose server stopped answering: no models, ``lost`` llama@v1."""
    obs = replica(rid, models=(), port=port, expires_at=expires_at)
    return replace(obs, record=replace(obs.record, lost=(("llama", "v1"),)))


def test_silent_replicas_stay_unhealthy_in_their_versions_cluster() -> None:
    view = fleet(
        replica("us1/r", port=8001),
        replica("us2/r", port=8002),
        silent("us3/r", port=8003),
        silent("us4/r", port=8004),
        replica("eu1/r", region="eu", zone="eu-a", port=8005),
    )
    plan = decide(view, Intent(), NODE, NOW)
    for name in ("llama@v1", "llama@v1#affinity"):
        c = next(c for c in plan.clusters if c.name == name)
        health = {e.replica_id: (e.health, e.priority) for e in c.endpoints}
        assert health == {
            "us1/r": (Health.HEALTHY, 0),
            "us2/r": (Health.HEALTHY, 0),
            "us3/r": (Health.UNHEALTHY, 0),
            "us4/r": (Health.UNHEALTHY, 0),
            "eu1/r": (Health.HEALTHY, 1),
        }, name
    # the route still counts only serving replicas
    route = plan.route_configs[0].models[0]
    assert [w.cluster for w in route.clusters] == ["llama@v1"]


def test_a_drained_or_stale_silent_replica_and_an_unknown_version_are_left_out() -> None:
    view = fleet(
        replica("us1/r", port=8001),
        silent("us2/r", port=8002),
        silent("us3/r", port=8003, expires_at=NOW - 1),
    )
    only = replace(view["us2/r"], record=replace(view["us2/r"].record, lost=(("llama", "v9"),)))
    plan = decide(view, Intent(drained=frozenset({"us2"})), NODE, NOW)
    c = next(c for c in plan.clusters if c.name == "llama@v1")
    assert [e.replica_id for e in c.endpoints] == ["us1/r"]
    plan = decide({**view, "us2/r": only}, Intent(), NODE, NOW)
    assert {c.name for c in plan.clusters} == {"llama@v1", "llama@v1#affinity"}
