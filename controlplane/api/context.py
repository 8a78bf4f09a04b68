"""What the API reads and acts through: ``ApiContext``, built by ``runtime.serve``.

The rollout parts are optional so a read-only app (and tests) can leave them out; the
endpoints that need them answer 503 then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from controlplane.api.auth import Access
from controlplane.api.errors import ApiError
from controlplane.api.tokens import TokenTable
from controlplane.api.ui_feed import UiFeed
from controlplane.fleet.audit import Actor
from controlplane.fleet.model import ReplicaRecord
from controlplane.runtime.audit import AuditTrail
from controlplane.runtime.autorollback import AutoRollback
from controlplane.runtime.fleet_watch import FleetSource
from controlplane.runtime.intent_replication import IntentReplication
from controlplane.runtime.intent_watch import IntentWatcher
from controlplane.runtime.load_flush import LoadAccumulator
from controlplane.runtime.reconcile import Reconciler
from controlplane.runtime.rollout_ops import RolloutService


class TestHooks:
    """Test-only switches, enabled by ``aixds serve --test-hooks``."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.invalid_xds = False


@dataclass
class ApiContext:
    """What the API reads. ``xds_status`` returns the ADS server's per-stream status."""

    watcher: FleetSource
    reconciler: Reconciler
    registry: CollectorRegistry
    xds_status: Callable[[], dict[str, Any]]
    test_hooks: TestHooks | None = None
    intents: IntentWatcher | None = None
    rollouts: RolloutService | None = None
    guard: AutoRollback | None = None
    loads: LoadAccumulator | None = None
    access: Access = field(default_factory=lambda: Access(TokenTable()))
    """Tokens and their scopes; the default has none (read-only API)."""
    audit: AuditTrail | None = None
    """Where changes are recorded (``GET /v1/audit`` reads it); None: 503 there."""
    redis: Any = None
    """The registry's Redis client (``redis.asyncio.Redis``), for operator writes."""
    replication: IntentReplication | None = None
    """Replicated intent's probe (fleet.yaml ``intent.home``); None: intent is local."""
    region_redis: dict[str, Any] = field(default_factory=dict)
    """Other regions' registry clients (fleet.yaml ``regions``): a node's own keys (desired
    models, GPU-fault clears) are written to its region's registry, where its agent reads."""
    ui: UiFeed = field(default_factory=UiFeed)
    """The dashboard's snapshot and timeline (``/ui``, ``/v1/events``)."""

    # What an endpoint needs, or the error that says why it cannot have it.

    def require_intents(self) -> IntentWatcher:
        if self.intents is None:
            raise ApiError(503, "no_intent", "this server does not track intent")
        return self.intents

    def require_rollouts(self) -> RolloutService:
        if self.rollouts is None:
            raise ApiError(503, "no_rollouts", "rollouts are not enabled on this server")
        return self.rollouts

    def require_audit(self) -> AuditTrail:
        if self.audit is None:
            raise ApiError(503, "no_audit", "this server keeps no audit log")
        return self.audit

    def require_redis(self) -> Any:
        if self.redis is None:
            raise ApiError(503, "no_redis", "this server has no Redis client")
        return self.redis

    def node_redis(self, node: str) -> Any:
        """The Redis client of the registry ``node`` publishes to: its region's when the fleet
        view places it in another region, else this server's own."""
        regions = {o.record.region for o in self.watcher.view.values() if o.record.node == node}
        for region in sorted(regions):
            if region in self.region_redis:
                return self.region_redis[region]
        return self.require_redis()

    async def record(self, by: Actor, action: str, target: str, old: Any, new: Any) -> None:
        """Append a change outside the intent (desired models, fault clears) to the audit
        log; intent changes are recorded by ``RolloutService`` itself."""
        if self.audit is not None:
            await self.audit.record(by, action, target, old, new)

    def node_records(self, node: str) -> list[ReplicaRecord]:
        """The records of ``node``'s replicas in the fleet view; 404 if it has none."""
        recs = [o.record for o in self.watcher.view.values() if o.record.node == node]
        if not recs:
            raise ApiError(404, "unknown_node", f"no replica of node {node!r} is known")
        return recs


T = TypeVar("T")


async def redis_op(what: str, call: Awaitable[T]) -> T:
    """Await a Redis call; any failure is a 503 ``redis_unreachable`` saying ``cannot what``."""
    try:
        return await call
    except Exception as e:
        raise ApiError(503, "redis_unreachable", f"cannot {what}: {e}") from None
