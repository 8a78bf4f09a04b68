"""The fleet view: an in-memory copy of the replica records, kept current from Redis.

Events (replica ids on the pub/sub channel) trigger targeted reads; a periodic full
resync catches anything missed and drops deleted keys. Malformed records are skipped,
counted and logged once. While Redis is unreachable the view is frozen (fail static) and
``connected`` is False, so the reconcile loop stops deciding; reconnection backs off. After
a reconnect, replicas already in the view are kept for a grace period even if their key is
gone (a restarted Redis is empty until agents publish again), so an outage of Redis can
never empty Envoy's endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.fleet.codec import RecordError
from controlplane.fleet.model import FleetView, ObservedReplica
from controlplane.fleet.store import RawEntry, RegistryReader, decode_entry
from controlplane.runtime.reconnect import reconnect_forever, reraise_if_cancelling

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class FleetSource(Protocol):
    """What the reconciler, the rollouts and the API read: one ``FleetWatcher``, or the
    merged view of every region's (``runtime.regions.RegionalFleet``)."""

    @property
    def view(self) -> FleetView: ...

    @property
    def connected(self) -> bool: ...

    @property
    def synced_once(self) -> bool: ...


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.malformed = Counter(
            "aixds_registry_malformed_records",
            "Replica records skipped because they do not follow the schema",
            registry=registry,
        )
        self.connected = Gauge(
            "aixds_registry_connected", "1 while Redis is reachable", registry=registry
        )
        self.replicas = Gauge(
            "aixds_registry_replicas", "Replica records in the fleet view", registry=registry
        )
        self.resyncs = Counter("aixds_registry_resyncs", "Full resyncs", registry=registry)
        self.disconnects = Counter(
            "aixds_registry_disconnects", "Times Redis became unreachable", registry=registry
        )


class FleetWatcher:
    def __init__(
        self,
        reader: RegistryReader,
        metrics: FleetMetrics,
        on_change: Callable[[], None],
        *,
        clock: Clock = time.time,
        resync_interval_s: float = 5.0,
        recovery_grace_s: float = 5.0,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._reader = reader
        self._m = metrics
        self._on_change = on_change
        self._clock = clock
        self._resync_interval_s = resync_interval_s
        self._recovery_grace_s = recovery_grace_s
        self._max_backoff_s = max_backoff_s
        self.view: dict[str, ObservedReplica] = {}
        self.connected = False
        self.synced_once = False
        self.last_ok = 0.0
        """When Redis last answered a read (our clock); 0: never."""
        self._grace_until = 0.0
        self._malformed_logged: set[str] = set()

    # -- applying reads -------------------------------------------------------------
    def _decode(self, entry: RawEntry) -> ObservedReplica | None:
        try:
            rec = decode_entry(entry)
        except RecordError as e:
            self._m.malformed.inc()
            if (
                entry.replica_id not in self._malformed_logged
                and len(self._malformed_logged) < 10_000
            ):
                self._malformed_logged.add(entry.replica_id)
                log.warning("skipping malformed record %r: %s", entry.replica_id, e)
            return None
        self._malformed_logged.discard(entry.replica_id)
        return ObservedReplica(rec, self._clock() + entry.ttl_s)

    def apply(self, entries: list[RawEntry], *, full: bool) -> bool:
        """Merge reads into the view; with ``full``, drop ids absent from ``entries``."""
        changed = False
        seen: set[str] = set()
        for e in entries:
            seen.add(e.replica_id)
            obs = self._decode(e) if e.raw is not None else None
            if obs is None:
                if e.raw is None and self._drop(e.replica_id):
                    changed = True
                continue
            old = self.view.get(e.replica_id)
            if old is None or old.record != obs.record:
                changed = True
            self.view[e.replica_id] = obs
        if full:
            for rid in [r for r in self.view if r not in seen]:
                changed |= self._drop(rid)
        self._m.replicas.set(len(self.view))
        return changed

    def _drop(self, rid: str) -> bool:
        if rid not in self.view:
            return False
        if self._clock() < self._grace_until:
            return False  # just reconnected: agents may not have re-published yet
        del self.view[rid]
        return True

    # -- the loops ------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, resync, follow events; on any Redis error freeze and reconnect."""
        await reconnect_forever(
            self._session,
            self._on_down,
            max_backoff_s=self._max_backoff_s,
            was_up=lambda: self.connected,
        )

    def _on_down(self, e: Exception) -> None:
        if self.connected:
            log.warning("Redis unreachable, fleet view frozen: %s", e)
            self._m.disconnects.inc()
        self._set_connected(False)

    async def _session(self) -> None:
        events = self._reader.events()
        pending: set[str] = set()
        wake = asyncio.Event()

        async def pump() -> None:
            async for rid in events:
                pending.add(rid)
                wake.set()

        pump_task = asyncio.create_task(pump(), name="fleet-events")
        # A dropped event stream (its connection lost, e.g. the primary killed before a
        # Sentinel failover) ends the session now, not at the next resync.
        pump_task.add_done_callback(lambda _: wake.set())
        try:
            await self._resync(first=True)
            next_resync = asyncio.get_running_loop().time() + self._resync_interval_s
            while True:
                reraise_if_cancelling()
                timeout = max(0.0, next_resync - asyncio.get_running_loop().time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                if pump_task.done():
                    pump_task.result()  # re-raise the connection error
                    raise ConnectionError("event stream ended")
                wake.clear()
                if pending:
                    ids = sorted(pending)
                    pending.clear()
                    entries = await self._reader.read(ids)
                    self.last_ok = self._clock()
                    if self.apply(entries, full=False):
                        self._on_change()
                if asyncio.get_running_loop().time() >= next_resync:
                    await self._resync(first=False)
                    next_resync = asyncio.get_running_loop().time() + self._resync_interval_s
        finally:
            pump_task.cancel()
            # redis-py can sit on a cancelled pub/sub read; never let it hold shutdown.
            await asyncio.wait([pump_task], timeout=1.0)

    async def _resync(self, *, first: bool) -> None:
        entries = await self._reader.read_all()
        self.last_ok = self._clock()
        if first:
            if self.synced_once:
                self._grace_until = self._clock() + self._recovery_grace_s
                # Frozen entries may have passed their expiry during the outage.
                self.view = {
                    k: ObservedReplica(v.record, max(v.expires_at, self._grace_until))
                    for k, v in self.view.items()
                }
            self._set_connected(True)
        self._m.resyncs.inc()
        changed = self.apply(entries, full=True)
        self.synced_once = True
        if changed or first:
            self._on_change()

    def _set_connected(self, up: bool) -> None:
        if up and not self.connected:
            log.info("Redis connected, fleet view live (%d replicas)", len(self.view))
        self.connected = up
        self._m.connected.set(1 if up else 0)
