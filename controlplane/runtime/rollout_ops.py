"""Rollout changes with effects: read intent, apply a pure change, compare-and-set, publish.

``RolloutService.change`` is what the config API (rollouts, drains) and the automatic
rollback call:

1. read the stored intent from Redis (fresh, not the watcher's copy: ``read_latest``, the
   writable copy, which with replicated intent is the home region's primary);
2. if the caller named the revision it saw and it is not the stored one: conflict;
3. apply the pure change from ``decide.rollout`` to it and the current fleet view;
4. write it with compare-and-set on the revision read (a concurrent writer: conflict);
5. adopt it locally, reconcile and publish at once;
6. append who changed what (only the parts that changed, old and new) to the audit log
   (``runtime.audit``: a failure there is counted and logged, the change stands);
7. wait (bounded) until the Envoys connected to this replica have ACKed the new
   snapshot. Other replicas follow through the intent-events channel.

Every write of the intent goes through here, so every one is in the audit log: the
caller names who makes it (a token's name, or ``controlplane:<what>``).

With replicated intent, a home that cannot be reached (or is no longer writable) makes
the change ``Unavailable`` with the store's reason (``intent_home_unreachable``): the
region keeps applying the intent it has and never writes its own copy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from controlplane.decide.rollout import Counts, RolloutPolicy, VersionCount, version_counts
from controlplane.fleet.audit import Actor, changes
from controlplane.fleet.intent_store import IntentStore, IntentUnwritable, RevisionConflict
from controlplane.intent import Intent, IntentError, Rollout, intent_to_doc
from controlplane.runtime.audit import AuditTrail
from controlplane.runtime.fleet_watch import FleetSource
from controlplane.runtime.intent_watch import IntentWatcher, decode_stored
from controlplane.runtime.reconcile import Reconciler

log = logging.getLogger(__name__)

Change = Callable[[Intent, Counts, float], Intent]
"""A pure change: (intent, version counts, now) -> new intent; raises ``RolloutError``."""

Converge = Callable[[float], Awaitable[tuple[int, int]]]
"""Wait up to the given seconds for Envoys to ACK; returns (current, total)."""


class Unavailable(Exception):
    """The change cannot be made now (Redis down, fleet view not read yet); retry later."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Applied:
    model: str
    action: str
    intent: Intent
    changed: bool
    """False when the change was a no-op (nothing written)."""
    envoys_current: int
    envoys_total: int

    @property
    def converged(self) -> bool:
        """Every Envoy connected to this replica ACKed the change before the answer."""
        return self.envoys_current == self.envoys_total


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.changes = Counter(
            "aixds_rollout_changes",
            "Rollout changes by action and result (ok, noop, conflict, refused, unavailable)",
            ["action", "result"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "aixds_rollbacks",
            "Rollbacks by model and trigger (auto: error-rate guard; manual: operator)",
            ["model", "trigger"],
            registry=registry,
        )


class RolloutService:
    def __init__(
        self,
        store: IntentStore,
        intents: IntentWatcher,
        fleet: FleetSource,
        reconciler: Reconciler,
        policy: RolloutPolicy,
        metrics: RolloutMetrics,
        *,
        audit: AuditTrail,
        converge: Converge | None = None,
        apply_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._intents = intents
        self._fleet = fleet
        self._reconciler = reconciler
        self.policy = policy
        self.metrics = metrics
        self.audit = audit
        self._converge = converge
        self._apply_timeout_s = apply_timeout_s
        self._clock = clock

    def counts(self) -> dict[str, dict[str, VersionCount]]:
        """Version counts of the current fleet view (for the API)."""
        return version_counts(self._fleet.view, self._intents.current(), self._clock())

    async def change(
        self,
        action: str,
        model: str,
        change: Change,
        *,
        by: Actor,
        expected_revision: int | None = None,
        wait_envoys: bool = True,
    ) -> Applied:
        """Apply ``change`` to ``model``'s rollout (see the module docstring), as ``by``.

        ``wait_envoys`` False: answer without waiting for the Envoys' ACKs (a change that
        moves no traffic). Raises ``RevisionConflict``, ``RolloutError`` or ``Unavailable``.
        """
        try:
            applied = await self._change(action, model, change, by, expected_revision, wait_envoys)
        except RevisionConflict:
            self.metrics.changes.labels(action, "conflict").inc()
            raise
        except Unavailable:
            self.metrics.changes.labels(action, "unavailable").inc()
            raise
        except Exception:
            self.metrics.changes.labels(action, "refused").inc()
            raise
        self.metrics.changes.labels(action, "ok" if applied.changed else "noop").inc()
        return applied

    async def _change(
        self,
        action: str,
        model: str,
        change: Change,
        by: Actor,
        expected: int | None,
        wait: bool,
    ) -> Applied:
        if not self._fleet.synced_once or not self._intents.synced:
            raise Unavailable(
                "not_synced", "the control plane has not read the fleet and intent from Redis yet"
            )
        try:
            stored = await self._store.read_latest()
            if stored.doc is None and self._intents.stored is not None:
                # Redis lost it (restarted without persistence): put ours back first.
                if await self._store.restore(self._intents.stored):
                    log.warning(
                        "intent missing from Redis: wrote back revision %d before a change",
                        self._intents.stored.revision,
                    )
                stored = await self._store.read_latest()
        except IntentUnwritable as e:
            raise self._unwritable(e) from e
        except (RedisError, OSError) as e:
            raise Unavailable("redis_unavailable", f"cannot read intent from Redis: {e}") from e
        if expected is not None and expected != stored.revision:
            raise RevisionConflict(expected, stored.revision)
        try:
            current = decode_stored(stored, self._intents.base)
        except IntentError as e:
            raise Unavailable(
                "intent_malformed", f"the stored intent does not decode; fix it in Redis: {e}"
            ) from e
        now = self._clock()
        counts = version_counts(self._fleet.view, current, now)
        new = change(current, counts, now)
        old_doc, new_doc = intent_to_doc(current), intent_to_doc(new)
        if new_doc == old_doc:
            return Applied(model, action, current, False, 0, 0)
        doc = json.dumps(new_doc, separators=(",", ":"), sort_keys=True)
        try:
            written = await self._store.write(stored.revision, doc)
        except IntentUnwritable as e:
            raise self._unwritable(e) from e
        except (RedisError, OSError) as e:
            raise Unavailable("redis_unavailable", f"cannot write intent to Redis: {e}") from e
        self._intents.adopt(written)
        result = self._intents.current()
        self._reconciler.reconcile_once()  # publish now; the loop would, a moment later
        before, after = changes(old_doc, new_doc)
        await self.audit.record(by, action, model, before, after, revision=written.revision)
        cur, total = 0, 0
        if self._converge is not None and wait:
            cur, total = await self._converge(self._apply_timeout_s)
        r = result.rollouts.get(model)
        if action == "rollback" and r is not None and r.last_rollback is not None:
            self.metrics.rollbacks.labels(model, r.last_rollback.trigger).inc()
        log.info(
            "%s %s by %s: intent revision %d%s; %d/%d Envoys current",
            action, model, by.name, written.revision,
            "" if r is None else f" ({_describe(r)})", cur, total,
        )  # fmt: skip
        return Applied(model, action, result, True, cur, total)

    def _unwritable(self, e: IntentUnwritable) -> Unavailable:
        kept = f"the last intent (revision {self._intents.revision}) keeps being applied"
        return Unavailable(e.code, f"{e.detail}; {kept}")


def _describe(r: Rollout) -> str:
    if r.canary:
        return f"stable {r.stable}, canary {r.canary} at {r.canary_percent:g}%"
    return f"stable {r.stable}"
