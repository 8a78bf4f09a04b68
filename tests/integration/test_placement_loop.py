"""The placement loop on a real redis-server: two control-plane replicas in-process share
one Redis. One acts (the placement lock) and writes the node's desired key for a model with
held requests; the other writes nothing; when the first leaves, the second takes over and
goes on from the demand history the first saved."""

from __future__ import annotations

import dataclasses
import json

import pytest
from prometheus_client import CollectorRegistry

from controlplane.activator.demand import ActivatorDemand, read_held_since
from controlplane.decide.placement import PlacementConfig
from controlplane.fleet import schema
from controlplane.fleet.leader import RedisLock
from controlplane.fleet.load_store import RedisLoadStore
from controlplane.fleet.model import AvailableModel, ObservedReplica
from controlplane.fleet.registry import connect
from controlplane.intent import Intent
from controlplane.runtime.placement_loop import PlacementLoop, PlacementMetrics
from tests.fleetgen import fleet, replica
from tests.support import RedisServer

pytestmark = pytest.mark.integration


def offering(obs: ObservedReplica, *avail: AvailableModel) -> ObservedReplica:
    return dataclasses.replace(obs, record=dataclasses.replace(obs.record, available=avail))


async def test_the_activators_oldest_hold_reaches_placement(redis_srv: RedisServer) -> None:
    view = fleet(offering(replica("gpu-1/vllm-8000", expires_at=1e12), AvailableModel("qwen")))
    clock = [1000.0]
    r = connect(redis_srv.url)
    demand = ActivatorDemand(r, "activator-y", clock=lambda: clock[0])
    loop = PlacementLoop(
        r,
        lambda: view,
        Intent,
        RedisLoadStore(r),
        RedisLock(r, schema.PLACEMENT_LOCK_KEY, "cp-0", ttl_s=5.0),
        PlacementMetrics(CollectorRegistry()),
        clock=lambda: clock[0],
    )
    try:
        first = demand.hold("qwen")
        clock[0] += 5.0
        second = demand.hold("qwen")
        await demand.flush()
        assert await read_held_since(r) == {"qwen": 1000.0}
        demand.release("qwen", first)
        await demand.flush()
        assert await read_held_since(r) == {"qwen": 1005.0}
        clock[0] = 1005.0 + PlacementConfig().starving_after_s
        await demand.flush()
        await loop.round()
        decision = json.loads(await r.get(schema.PLACEMENT_KEY) or "{}")
        assert "held 60 s: outranks models served now" in decision["models"]["qwen"]["reasons"]
        demand.release("qwen", second)
        await demand.flush()
        assert await read_held_since(r) == {} and demand.oldest() == {}
    finally:
        await r.aclose()


async def test_one_replica_places_and_the_next_goes_on_from_its_history(
    redis_srv: RedisServer,
) -> None:
    view = fleet(offering(replica("gpu-1/vllm-8000", expires_at=1e12), AvailableModel("qwen")))
    clock = [1000.0]
    clients = [connect(redis_srv.url) for _ in range(2)]
    registries = [CollectorRegistry() for _ in range(2)]
    loops = [
        PlacementLoop(
            c,
            lambda: view,
            Intent,
            RedisLoadStore(c),
            RedisLock(c, schema.PLACEMENT_LOCK_KEY, f"cp-{i}", ttl_s=5.0),
            PlacementMetrics(registries[i]),
            clock=lambda: clock[0],
        )
        for i, c in enumerate(clients)
    ]
    try:
        r = clients[0]
        await r.hset(schema.waiting_key("activator-x"), mapping={"qwen": "2"})
        for _ in range(3):
            for loop in loops:
                await loop.round()
            clock[0] += 1.0
        entry = await r.hget(schema.desired_key("gpu-1"), "qwen")
        assert entry is not None and json.loads(entry)["server"] == "vllm-8000"
        decision = json.loads(await r.get(schema.PLACEMENT_KEY) or "{}")
        assert decision["decided_by"] == "cp-0"
        assert decision["models"]["qwen"]["waiting"] == 2
        assert not any("outranks" in r for r in decision["models"]["qwen"]["reasons"])
        assert loops[1].histories is None  # the second never acted
        node = decision["nodes"]["gpu-1"]
        assert node["host_from"] == "ratio"
        used = registries[0].get_sample_value(
            "aixds_placement_memory_bytes", {"node": "gpu-1", "memory": "gpu", "of": "used"}
        )
        assert used == node["gpu_used_bytes"]

        await loops[0].leave()  # as on shutdown: histories saved, lock given up
        await r.delete(schema.waiting_key("activator-x"))
        for loop in loops[::-1]:
            await loop.round()  # cp-1 takes the lock first now
        assert json.loads(await r.get(schema.PLACEMENT_KEY) or "{}")["decided_by"] == "cp-1"
        assert loops[1].histories is not None
        # the taken-over history knows the model was active (held requests count)
        assert loops[1].histories["qwen"].last_request_at is not None
    finally:
        for c in clients:
            await c.aclose()
