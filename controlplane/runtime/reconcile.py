"""The reconcile loop: on change, run ``decide()`` per Envoy node group, build, publish.

Changes (fleet events, intent, a new node group) are coalesced over a short window. The
loop also wakes when a replica's record reaches its expiry on our clock, so a replica whose
agent died leaves EDS within its TTL even if no event arrives, and when a draining model
version changes phase (see ``decide.rollout``). Nothing is published until the fleet view
and the intent have been read from Redis once (a restarted control plane must not publish
default routes in the middle of a canary), nor while Redis is unreachable (fail static):
Envoy keeps serving its last config. A plan that fails validation is never published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.rollout import next_deadline
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import AFFINITY_SUFFIX, Plan
from controlplane.runtime.fleet_watch import FleetSource
from controlplane.xds.build import build_resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.snapshot import Snapshot

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ResourceHook = Callable[[dict[str, list[object]]], None]


class ReconcileMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Histogram(
            "aixds_reconcile_seconds",
            "Time to decide, build and publish all node groups once",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.published = Counter(
            "aixds_snapshots_published",
            "Snapshots published (a changed version)",
            ["group"],
            registry=registry,
        )
        self.rejected = Counter(
            "aixds_plans_rejected",
            "Plans that failed validation and were not published",
            ["group"],
            registry=registry,
        )
        self.shed = Gauge(
            "aixds_affinity_shed_replicas",
            "Replicas shed from a version's session-affinity cluster (DEGRADED: their "
            "sessions go to other replicas until they recover)",
            ["group", "cluster"],
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class GroupState:
    node: EnvoyNode
    plan: Plan
    snapshot: Snapshot
    at: float


class Reconciler:
    def __init__(
        self,
        watcher: FleetSource,
        intent: Callable[[], Intent],
        cache: SnapshotCache,
        metrics: ReconcileMetrics,
        *,
        coalesce_s: float = 0.002,
        tick_s: float = 0.1,
        clock: Clock = time.time,
        intent_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._watcher = watcher
        self._intent = intent
        self._cache = cache
        self._m = metrics
        self._coalesce_s = coalesce_s
        self._tick_s = tick_s
        self._clock = clock
        self._intent_ready = intent_ready
        self._wake = asyncio.Event()
        self._nodes: dict[str, EnvoyNode] = {}
        self.groups: dict[str, GroupState] = {}
        self._next_expiry = float("inf")
        self.resource_hook: ResourceHook | None = None
        """Test-only: mutates built resources before publishing (see ``testhooks``)."""
        self.applied_revision = -1
        """Intent revision of the last completed reconcile (-1: none yet)."""

    def add_group(self, group: str, node: EnvoyNode) -> None:
        if group not in self._nodes:
            log.info("new node group %s: %s", group, node)
            self._nodes[group] = node
            self.trigger()

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            except TimeoutError:
                if self._clock() < self._next_expiry:
                    continue
            await asyncio.sleep(self._coalesce_s)
            self._wake.clear()
            self.reconcile_once()

    def reconcile_once(self) -> None:
        w = self._watcher
        if not w.synced_once or not w.connected or not self._intent_ready():
            return  # fail static: keep whatever Envoy has
        t0 = time.perf_counter()
        now = self._clock()
        view = dict(w.view)
        intent = self._intent()
        for group, node in list(self._nodes.items()):
            self._reconcile_group(group, node, view, intent, now)
        self._next_expiry = min(
            min((o.expires_at for o in view.values() if o.expires_at > now), default=float("inf")),
            next_deadline(intent, now),
        )
        self.applied_revision = intent.revision
        self._m.runs.observe(time.perf_counter() - t0)

    def _reconcile_group(
        self, group: str, node: EnvoyNode, view: FleetView, intent: Intent, now: float
    ) -> None:
        prev = self.groups.get(group)
        shed_before = prev.plan.shed() if prev is not None else frozenset()
        plan = decide(view, intent, node, now, shed_before=shed_before)
        problems = plan.validate()
        if problems:
            self._m.rejected.labels(group).inc()
            log.error("plan for %s rejected, keeping the last good one: %s", group, problems)
            return
        resources: dict[str, list[object]] = {k: list(v) for k, v in build_resources(plan).items()}
        if self.resource_hook is not None:
            self.resource_hook(resources)
        snap = Snapshot.from_resources(resources)
        self._report_shed(group, shed_before, plan, view)
        if prev is not None and prev.snapshot.versions == snap.versions:
            self.groups[group] = GroupState(node, plan, prev.snapshot, prev.at)
            return
        self._cache.set_snapshot(group, snap)
        self.groups[group] = GroupState(node, plan, snap, now)
        self._m.published.labels(group).inc()

    def _report_shed(
        self, group: str, was: frozenset[tuple[str, str]], plan: Plan, view: FleetView
    ) -> None:
        """The shed-replica gauge per affinity cluster, and a log line when one is shed or
        comes back (``was``: the previous plan's shed set)."""
        now = plan.shed()
        for cluster in {c.name for c in plan.clusters if c.name.endswith(AFFINITY_SUFFIX)}:
            self._m.shed.labels(group, cluster).set(sum(1 for c, _ in now if c == cluster))
        for cluster, rid in sorted(now - was):
            log.info(
                "affinity: %s shed from %s in %s (far worse than its peers: %s)",
                rid,
                cluster,
                group,
                _inputs(view, rid),
            )
        for cluster, rid in sorted(was - now):
            log.info("affinity: %s back in %s in %s", rid, cluster, group)


def _inputs(view: FleetView, replica_id: str) -> str:
    """What the shedding decision saw of one replica, for its log line."""
    obs = view.get(replica_id)
    if obs is None:
        return "no record"
    rec = obs.record
    return (
        f"speed {rec.speed:g}, capacity {rec.capacity:g}, running {rec.load.running:g}, "
        f"waiting {rec.load.queue_waiting:g}, kv {rec.load.kv_cache_usage:.2f}"
    )
