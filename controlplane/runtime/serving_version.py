"""The serving-version loop: record each new model's serving version; report fail-open.

On every change of the fleet view or intent (coalesced) and every ``interval_s``, each
control-plane replica:

1. reports fail-open: a model whose recorded stable version has no serving replica, so
   ``decide()`` sends its traffic to the best remaining version
   (``decide.rollout.serving_fallback``). The gauge
   ``aixds_serving_version_fallback{model}`` is 1 while that lasts, and a log line says
   when it starts, moves and ends. Intent is never rewritten for it.
2. records the serving version of every model seen serving with none recorded
   (``decide.rollout.record_serving_versions``: the default rule, applied once). Only the
   replica holding the serving-version lock (Redis, with a TTL) writes, through
   ``RolloutService`` with compare-and-set on the intent revision it judged, so a model
   that another writer recorded or rolled out meanwhile is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from controlplane.decide.rollout import (
    Counts,
    record_serving_versions,
    routable_versions,
    serving_fallback,
    unrecorded,
    version_counts,
)
from controlplane.fleet.audit import controlplane
from controlplane.fleet.intent_store import RevisionConflict
from controlplane.fleet.leader import Lock
from controlplane.intent import Intent
from controlplane.runtime.acting import Acting
from controlplane.runtime.fleet_watch import FleetSource
from controlplane.runtime.intent_watch import IntentWatcher
from controlplane.runtime.rollout_ops import RolloutService, Unavailable

log = logging.getLogger(__name__)

RECORDER = controlplane("serving-version")
"""Who a recorded serving version is by, in the audit log."""


class ServingVersionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.fallback = Gauge(
            "aixds_serving_version_fallback",
            "1 while a model's recorded stable version has no serving replica and its "
            "traffic fails open to another version",
            ["model"],
            registry=registry,
        )
        self.leader = Gauge(
            "aixds_serving_version_leader",
            "1 while this replica holds the lock that records serving versions",
            registry=registry,
        )


class ServingVersions:
    def __init__(
        self,
        service: RolloutService,
        intents: IntentWatcher,
        fleet: FleetSource,
        lock: Lock,
        metrics: ServingVersionMetrics,
        *,
        interval_s: float = 1.0,
        coalesce_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._intents = intents
        self._fleet = fleet
        self._acting = Acting(lock, metrics.leader, "serving-version")
        self._m = metrics
        self._interval_s = interval_s
        self._coalesce_s = coalesce_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._renewed = -float("inf")
        self.fallbacks: dict[str, str] = {}
        """model -> the version taking its traffic while its stable cannot (fail open)."""

    @property
    def leader(self) -> bool:
        """This replica holds the serving-version lock and writes."""
        return self._acting.leader

    def trigger(self) -> None:
        """The fleet view or intent changed: check soon."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
                self._wake.clear()
                await self._acting.tick(self.tick)
                await asyncio.sleep(self._coalesce_s)
        finally:
            await self._acting.release()

    async def tick(self) -> None:
        f = self._fleet
        if not f.synced_once or not f.connected or not self._intents.synced:
            return  # a partial view must not decide what a model's first version was
        intent = self._intents.current()
        counts = version_counts(f.view, intent, self._clock())
        self._report(intent, counts)
        new = unrecorded(intent, counts)
        if new or time.monotonic() - self._renewed >= self._interval_s:
            await self._acting.hold()
            self._renewed = time.monotonic()
        if new and self.leader:
            await self._record(new, intent)

    def _report(self, intent: Intent, counts: Counts) -> None:
        models = sorted(set(counts) | set(intent.rollouts))
        now = {m: v for m in models if (v := serving_fallback(m, counts, intent)) is not None}
        for m in models:
            self._m.fallback.labels(m).set(1 if m in now else 0)
        for m, v in now.items():
            if self.fallbacks.get(m) != v:
                log.warning(
                    "FAIL OPEN: %s's stable version %s has no serving replica; its traffic "
                    "goes to %s until it serves again (intent unchanged)",
                    m, intent.rollouts[m].stable, v,
                )  # fmt: skip
        for m in sorted(self.fallbacks.keys() - now.keys()):
            r = intent.rollouts.get(m)
            if r is not None and routable_versions(m, counts, intent):
                log.warning("fail open of %s ended: its stable version %s serves", m, r.stable)
            else:
                log.warning("fail open of %s ended: no version of it serves", m)
        self.fallbacks = now

    async def _record(self, new: dict[str, str], judged: Intent) -> None:
        try:
            applied = await self._service.change(
                "record",
                ",".join(new),
                record_serving_versions,
                by=RECORDER,
                expected_revision=judged.revision,
                wait_envoys=False,
            )
        except RevisionConflict:
            log.debug("serving versions of %s deferred: intent changed meanwhile", ",".join(new))
            return
        except Unavailable as e:
            log.warning("serving versions of %s not recorded: %s", ",".join(new), e)
            return
        for m in new:
            r = applied.intent.rollouts.get(m)
            if applied.changed and r is not None and m not in judged.rollouts:
                log.info(
                    "serving version of %s recorded at first sight: %s (intent revision %d)",
                    m, r.stable, applied.intent.revision,
                )  # fmt: skip
