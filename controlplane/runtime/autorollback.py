"""The automatic rollback loop: judge every canary from load reports; one replica acts.

Every ``interval_s`` each replica tries to hold the rollback lock (Redis, with a TTL),
reads the per-second load buckets of the window from Redis (every replica's Envoys
contribute), and evaluates each canary in progress (``decide.rollback.evaluate``). All
replicas publish the verdicts in the API and metrics; only the lock holder acts: it rolls
the canary back through ``RolloutService`` (compare-and-set on the revision it judged, so
a canary that changed meanwhile is left alone), which records the reason in intent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from controlplane.decide.rollback import RollbackPolicy, Verdict, evaluate, window_start
from controlplane.decide.rollout import (
    Counts,
    ErrorKind,
    RolloutError,
    RolloutPolicy,
    rollback,
)
from controlplane.fleet.audit import controlplane
from controlplane.fleet.intent_store import RevisionConflict
from controlplane.fleet.leader import Lock
from controlplane.fleet.load_store import LoadStore
from controlplane.intent import Intent, Rollout
from controlplane.runtime.acting import Acting
from controlplane.runtime.intent_watch import IntentWatcher
from controlplane.runtime.rollout_ops import RolloutService, Unavailable

log = logging.getLogger(__name__)

AUTO_ROLLBACK = controlplane("auto-rollback")
"""Who an automatic rollback is by, in the audit log."""


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge(
            "aixds_rollback_leader",
            "1 while this replica holds the lock that acts for automatic rollback",
            registry=registry,
        )
        self.error_rate = Gauge(
            "aixds_rollout_error_rate",
            "Error rate in the rollback window, by model and role (stable, canary)",
            ["model", "role"],
            registry=registry,
        )
        self.canary_percent = Gauge(
            "aixds_rollout_canary_percent",
            "Traffic share of the canary in progress, by model (0 without one)",
            ["model"],
            registry=registry,
        )
        self.requests = Gauge(
            "aixds_rollout_window_requests",
            "Requests completed in the rollback window, by model and role (stable, canary)",
            ["model", "role"],
            registry=registry,
        )


class AutoRollback:
    def __init__(
        self,
        service: RolloutService,
        intents: IntentWatcher,
        loads: LoadStore,
        lock: Lock,
        policy: RollbackPolicy,
        metrics: GuardMetrics,
        *,
        interval_s: float = 0.5,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._intents = intents
        self._loads = loads
        self._acting = Acting(lock, metrics.leader, "automatic-rollback")
        self.policy = policy
        self._m = metrics
        self._interval_s = interval_s
        self.enabled = enabled
        """False: judge and report, never act."""
        self._clock = clock
        self.verdicts: dict[str, Verdict] = {}
        """The latest verdict per model with a canary in progress."""

    @property
    def owner(self) -> str:
        return self._acting.owner

    @property
    def leader(self) -> bool:
        """This replica holds the rollback lock and acts."""
        return self._acting.leader

    async def holder(self) -> str | None:
        return await self._acting.holder()

    async def run(self) -> None:
        try:
            while True:
                await self._acting.tick(self.tick)
                await asyncio.sleep(self._interval_s)
        finally:
            await self._acting.release()

    async def tick(self) -> None:
        await self._acting.hold()
        intent = self._intents.current()
        now = self._clock()
        for model, r in intent.rollouts.items():
            self._m.canary_percent.labels(model).set(r.canary_percent if r.canary else 0.0)
        canaries = {m: r for m, r in intent.rollouts.items() if r.canary and r.canary != r.stable}
        for m in [m for m in self.verdicts if m not in canaries]:
            del self.verdicts[m]
            for role in ("stable", "canary"):
                with contextlib.suppress(KeyError):
                    self._m.error_rate.remove(m, role)
                    self._m.requests.remove(m, role)
        if not canaries:
            return
        since = min(window_start(r, self.policy, now) for r in canaries.values())
        buckets = await self._loads.read(since, now)
        for model, r in sorted(canaries.items()):
            v = evaluate(model, r, buckets, self.policy, now)
            if v is None:
                continue
            self.verdicts[model] = v
            for role, rate in (("stable", v.stable), ("canary", v.canary)):
                self._m.error_rate.labels(model, role).set(rate.rate)
                self._m.requests.labels(model, role).set(rate.requests)
            if v.rollback and self.leader and self.enabled:
                await self._act(model, r, v, intent)

    async def _act(self, model: str, judged: Rollout, v: Verdict, intent: Intent) -> None:
        policy: RolloutPolicy = self._service.policy

        def change(cur: Intent, counts: Counts, now: float) -> Intent:
            r = cur.rollouts.get(model)
            if r is None or r.canary != judged.canary or r.started_at != judged.started_at:
                raise RolloutError(ErrorKind.CONFLICT, "stale", "the canary changed meanwhile")
            return rollback(cur, model, v.reason, "auto", counts, policy, now)

        try:
            applied = await self._service.change(
                "rollback", model, change, by=AUTO_ROLLBACK, expected_revision=intent.revision
            )
        except RevisionConflict:
            log.info("automatic rollback of %s deferred: intent changed meanwhile", model)
            return
        except (RolloutError, Unavailable) as e:
            log.warning("automatic rollback of %s not done: %s", model, e)
            return
        log.warning(
            "AUTOMATIC ROLLBACK of %s from %s to %s (intent revision %d): %s",
            model, judged.canary, judged.stable, applied.intent.revision, v.reason,
        )  # fmt: skip
