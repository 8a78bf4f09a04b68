"""The serving-version loop on a real redis-server: control-plane replicas in-process, each
with its own connection, intent watcher, rollout service and lock, sharing one Redis.

One replica writes the record (the lock), a stale revision never overwrites a newer
intent (compare-and-set), and a restarted control plane keeps the recorded version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.rollout import RolloutPolicy
from controlplane.fleet import schema
from controlplane.fleet.audit import RedisAuditLog
from controlplane.fleet.intent_store import RedisIntentStore
from controlplane.fleet.leader import RedisLock
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.fleet.registry import connect
from controlplane.fleet.store import MemoryRegistry
from controlplane.intent import Intent
from controlplane.runtime.audit import AuditMetrics, AuditTrail
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from controlplane.runtime.reconcile import ReconcileMetrics, Reconciler
from controlplane.runtime.rollout_ops import RolloutMetrics, RolloutService
from controlplane.runtime.serving_version import ServingVersionMetrics, ServingVersions
from controlplane.xds.cache import SnapshotCache
from tests.fleetgen import fleet, replica
from tests.rollout_app import FAR
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration


def llama(version: str, n: int) -> list[ObservedReplica]:
    return [
        replica(f"{version}-{i}/a", models=(("llama", version, ModelState.READY),), expires_at=FAR)
        for i in range(n)
    ]


@dataclass
class Replica:
    """One control-plane replica's parts that the serving-version loop uses."""

    name: str
    client: aioredis.Redis
    watcher: FleetWatcher
    intents: IntentWatcher
    loop: ServingVersions
    registry: CollectorRegistry

    def changes(self) -> float:
        v = self.registry.get_sample_value(
            "aixds_rollout_changes_total", {"action": "record", "result": "ok"}
        )
        return v or 0.0


@contextlib.asynccontextmanager
async def control_plane(
    url: str, name: str, view: dict[str, ObservedReplica]
) -> AsyncIterator[Replica]:
    reg = CollectorRegistry()
    client = connect(url)
    watcher = FleetWatcher(MemoryRegistry(lambda: 0.0), FleetMetrics(reg), lambda: None)
    watcher.view = view
    watcher.synced_once = watcher.connected = True
    holder: list[ServingVersions] = []
    intents = IntentWatcher(
        RedisIntentStore(client),
        Intent(),
        lambda: holder[0].trigger() if holder else None,
        IntentMetrics(reg),
        resync_s=0.5,
    )
    reconciler = Reconciler(watcher, intents.current, SnapshotCache(), ReconcileMetrics(reg))
    service = RolloutService(
        RedisIntentStore(client),
        intents,
        watcher,
        reconciler,
        RolloutPolicy(),
        RolloutMetrics(reg),
        audit=AuditTrail(RedisAuditLog(client), AuditMetrics(reg)),
    )
    lock = RedisLock(client, schema.SERVING_VERSION_LOCK_KEY, name, ttl_s=2.0)
    loop = ServingVersions(
        service, intents, watcher, lock, ServingVersionMetrics(reg), interval_s=0.1
    )
    holder.append(loop)
    tasks = [asyncio.create_task(intents.run()), asyncio.create_task(loop.run())]
    try:
        yield Replica(name, client, watcher, intents, loop, reg)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=2)
        await client.aclose()


async def stored(url: str) -> tuple[int, dict[str, str]]:
    """The stored intent's revision and model -> stable version."""
    client = connect(url)
    try:
        s = await RedisIntentStore(client).read()
    finally:
        await client.aclose()
    doc = json.loads(s.doc) if s.doc else {"rollouts": {}}
    return s.revision, {m: r["stable"] for m, r in doc["rollouts"].items()}


async def test_one_replica_records_once_and_a_restart_keeps_it(redis_srv: RedisServer) -> None:
    url = redis_srv.url
    blue = fleet(*llama("v1", 2))
    async with (
        control_plane(url, "cp-a", dict(blue)) as a,
        control_plane(url, "cp-b", dict(blue)) as b,
        control_plane(url, "cp-c", dict(blue)) as c,
    ):
        cps = (a, b, c)

        async def recorded() -> bool:
            return await stored(url) == (1, {"llama": "v1"}) and all(
                cp.intents.revision == 1 for cp in cps
            )

        await eventually(recorded)
        assert sum(cp.changes() for cp in cps) == 1.0  # one write, by one replica
        assert [cp.loop.leader for cp in cps].count(True) == 1
        holder = await a.client.get(schema.SERVING_VERSION_LOCK_KEY)
        assert holder == next(cp.name for cp in cps if cp.loop.leader)
        (e,) = await RedisAuditLog(a.client).read(10)  # and the audit log says so
        assert (e.who, e.action, e.target, e.revision) == (
            "controlplane:serving-version",
            "record",
            "llama",
            1,
        )
        assert e.new["rollouts"]["llama"]["stable"] == "v1"
        # green comes up beside blue, bigger and with a greater name: nothing changes
        green = fleet(*llama("v1", 2), *llama("v2", 3))
        for cp in cps:
            cp.watcher.view = dict(green)
            cp.loop.trigger()
        await asyncio.sleep(0.5)
        assert await stored(url) == (1, {"llama": "v1"})

    # a restarted control plane (a fresh replica) sees the bigger green fleet first
    async with control_plane(url, "cp-d", dict(green)) as d:
        await eventually(lambda: _synced(d))
        await asyncio.sleep(0.3)
        assert await stored(url) == (1, {"llama": "v1"})
        plan = decide(green, d.intents.current(), EnvoyNode(), 0.0)
        (route,) = plan.route_configs[0].models
        assert [w.cluster for w in route.clusters] == ["llama@v1"]
        assert d.changes() == 0.0


async def _synced(cp: Replica) -> bool:
    return cp.intents.synced and cp.intents.revision == 1


async def test_a_stale_revision_never_overwrites_a_newer_intent(redis_srv: RedisServer) -> None:
    url = redis_srv.url
    async with control_plane(url, "cp-a", fleet(*llama("v1", 1))) as a:
        await eventually(lambda: _synced(a))
        # hold this replica's view at revision 1, then another writer records qwen as q2
        a.intents.adopt = lambda stored: False  # type: ignore[method-assign]
        client = connect(url)
        store = RedisIntentStore(client)
        doc = {"schema": 1, "rollouts": {"llama": {"stable": "v1"}, "qwen": {"stable": "q2"}}}
        await store.write(1, json.dumps(doc))
        await client.aclose()
        # a qwen q1 replica appears: this replica judges it unrecorded at revision 1
        a.watcher.view = {
            **a.watcher.view,
            **fleet(replica("q1-0/a", models=(("qwen", "q1", ModelState.READY),), expires_at=FAR)),
        }
        a.loop.trigger()
        await asyncio.sleep(0.5)
        assert await stored(url) == (2, {"llama": "v1", "qwen": "q2"})
        assert a.changes() == 1.0  # the first record only; the stale one conflicted
        conflicts = a.registry.get_sample_value(
            "aixds_rollout_changes_total", {"action": "record", "result": "conflict"}
        )
        assert conflicts is not None and conflicts >= 1
