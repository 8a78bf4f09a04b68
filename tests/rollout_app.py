"""The config API in-process, on in-memory stores: for API tests without Redis or Envoy.

``build()`` wires the real watchers, reconciler, rollout service and rollback guard to
``MemoryIntentStore``/``MemoryLoadStore``/``MemoryLock`` and a fleet view set directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from controlplane.api.app import ApiContext, create_app
from controlplane.api.auth import Access, AccessMetrics
from controlplane.api.tokens import TokenTable, load_tokens
from controlplane.decide.rollback import RollbackPolicy
from controlplane.decide.rollout import RolloutPolicy
from controlplane.fleet.audit import AuditLog, MemoryAuditLog
from controlplane.fleet.intent_store import IntentStore, MemoryIntentStore
from controlplane.fleet.leader import MemoryLock
from controlplane.fleet.load_store import MemoryLoadStore
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.fleet.store import MemoryRegistry
from controlplane.intent import Intent
from controlplane.runtime.audit import AuditMetrics, AuditTrail
from controlplane.runtime.autorollback import AutoRollback, GuardMetrics
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from controlplane.runtime.load_flush import LoadAccumulator
from controlplane.runtime.reconcile import ReconcileMetrics, Reconciler
from controlplane.runtime.rollout_ops import RolloutMetrics, RolloutService
from controlplane.xds.cache import SnapshotCache
from tests.fleetgen import replica

FAR = time.time() + 10 * 365 * 86400
"""Records that never expire during a test."""


def default_fleet() -> dict[str, ObservedReplica]:
    """llama v1 x2 (stable by the default rule), v2 x1, v3 loading; qwen q1 x1."""
    reps = [
        replica("n1/a", port=8001, models=(("llama", "v1", ModelState.READY),), expires_at=FAR),
        replica("n2/a", port=8002, models=(("llama", "v1", ModelState.READY),), expires_at=FAR),
        replica("n3/a", port=8003, models=(("llama", "v2", ModelState.READY),), expires_at=FAR),
        replica("n4/a", port=8004, models=(("llama", "v3", ModelState.LOADING),), expires_at=FAR),
        replica("n5/a", port=8005, models=(("qwen", "q1", ModelState.READY),), expires_at=FAR),
    ]
    return {r.record.replica_id: r for r in reps}


class MemoryRedis:
    """The few ``redis.asyncio.Redis`` calls the API makes (hashes, ``set``), in memory."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.strings: dict[str, str] = {}

    async def hgetall(self, key: str) -> dict[str, str]:
        return dict(self.hashes.get(key, {}))

    async def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    async def hlen(self, key: str) -> int:
        return len(self.hashes.get(key, {}))

    async def hset(self, key: str, field: str, value: str) -> int:
        h = self.hashes.setdefault(key, {})
        new = field not in h
        h[field] = value
        return int(new)

    async def hdel(self, key: str, field: str) -> int:
        return int(self.hashes.get(key, {}).pop(field, None) is not None)

    async def set(self, key: str, value: str) -> bool:
        self.strings[key] = value
        return True

    async def get(self, key: str) -> str | None:
        return self.strings.get(key)


@dataclass
class App:
    app: FastAPI
    store: Any
    """The ``MemoryIntentStore`` unless ``build(store=...)`` was given another."""
    intents: IntentWatcher
    watcher: FleetWatcher
    service: RolloutService
    guard: AutoRollback
    guard_lock: MemoryLock
    loads: MemoryLoadStore
    registry: CollectorRegistry
    audit: Any
    """The ``MemoryAuditLog`` unless ``build(audit=...)`` was given another."""
    reconciler: Reconciler


def build(
    token: str = "tok",
    fleet: dict[str, ObservedReplica] | None = None,
    redis: Any = None,
    store: IntentStore | None = None,
    *,
    tokens: TokenTable | None = None,
    require_read: bool = False,
    audit: AuditLog | None = None,
    region_redis: dict[str, Any] | None = None,
) -> App:
    """The app; ``token`` is the admin token (``--api-token``), ``tokens`` more of them."""
    reg = CollectorRegistry()
    watcher = FleetWatcher(MemoryRegistry(time.time), FleetMetrics(reg), lambda: None)
    watcher.view = fleet if fleet is not None else default_fleet()
    watcher.synced_once = watcher.connected = True
    store = store if store is not None else MemoryIntentStore()
    cache = SnapshotCache()
    holder: list[Reconciler] = []
    intents = IntentWatcher(
        store, Intent(), lambda: holder[0].trigger() if holder else None, IntentMetrics(reg)
    )
    intents.synced = True
    reconciler = Reconciler(watcher, intents.current, cache, ReconcileMetrics(reg))
    holder.append(reconciler)
    audit = audit if audit is not None else MemoryAuditLog()
    trail = AuditTrail(audit, AuditMetrics(reg))
    service = RolloutService(
        store,
        intents,
        watcher,
        reconciler,
        RolloutPolicy(drain_s=5.0),
        RolloutMetrics(reg),
        audit=trail,
    )
    loads = MemoryLoadStore()
    lock = MemoryLock("test-replica")
    guard = AutoRollback(service, intents, loads, lock, RollbackPolicy(), GuardMetrics(reg))
    ctx = ApiContext(
        watcher,
        reconciler,
        reg,
        lambda: {"streams": [], "nacks": {}},
        intents=intents,
        rollouts=service,
        guard=guard,
        loads=LoadAccumulator(loads),
        access=Access(
            TokenTable([*load_tokens(api_token=token).tokens, *(tokens or TokenTable()).tokens]),
            require_read=require_read,
            metrics=AccessMetrics(reg),
        ),
        audit=trail,
        redis=redis,
        region_redis=region_redis or {},
    )
    return App(
        create_app(ctx),
        store,
        intents,
        watcher,
        service,
        guard,
        lock,
        loads,
        reg,
        audit,
        reconciler,
    )
