"""A registry per region: one ``FleetWatcher`` per region's Redis, one merged view.

The local region's watcher decides ``connected`` and ``synced_once``, so losing the local
Redis keeps failing static as before. A remote region whose registry has not answered
for half of ``grace_s`` is *demoted*: its replicas stay in the view but are no longer
fresh (``expires_at`` capped), so ``decide()`` stops sending them traffic; after
``grace_s`` it is *lost* and its replicas leave the view. Both undo themselves as soon as
the registry answers again. Silence counts from the watcher's last successful read, so
remote watchers must resync well within half the grace. A replica id found in two
regions' registries is taken from the registry of its record's own region; the conflict
is logged once and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge

from controlplane.fleet.model import ObservedReplica
from controlplane.runtime.fleet_watch import Clock, FleetWatcher

log = logging.getLogger(__name__)

RegionState = Literal["live", "demoted", "lost"]


class RegionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "aixds_region_state",
            "Per region: 0 live, 1 demoted (registry silent past half the grace), 2 lost",
            ["region"],
            registry=registry,
        )
        self.conflicts = Gauge(
            "aixds_region_conflicting_replicas",
            "Replica ids currently found in more than one region's registry",
            registry=registry,
        )


_LEVEL: dict[RegionState, int] = {"live": 0, "demoted": 1, "lost": 2}


class RegionalFleet:
    """Every region's registry behind one ``view`` (implements ``FleetSource``)."""

    def __init__(
        self,
        local: str,
        watchers: Mapping[str, FleetWatcher],
        metrics: RegionMetrics,
        on_change: Callable[[], None],
        *,
        grace_s: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        if local not in watchers:
            raise ValueError(f"no watcher for the local region {local!r}")
        self.local = local
        self.watchers = dict(watchers)
        self._m = metrics
        self._on_change = on_change
        self._grace_s = grace_s
        self._clock = clock
        self._started = clock()
        self._states: dict[str, RegionState] = {r: "live" for r in self.watchers}
        self._conflicts: set[str] = set()
        for r in self.watchers:
            self._m.state.labels(region=r).set(0)

    @property
    def connected(self) -> bool:
        return self.watchers[self.local].connected

    @property
    def synced_once(self) -> bool:
        return self.watchers[self.local].synced_once

    def state(self, region: str) -> RegionState:
        """live, demoted or lost, from how long the region's registry has been silent."""
        if region == self.local:
            return "live"  # the local registry fails static instead (FleetWatcher)
        silent = self._clock() - max(self.watchers[region].last_ok, self._started)
        if silent >= self._grace_s:
            return "lost"
        if silent >= self._grace_s / 2:
            return "demoted"
        return "live"

    @property
    def view(self) -> dict[str, ObservedReplica]:
        merged: dict[str, ObservedReplica] = {}
        source: dict[str, str] = {}
        conflicts: set[str] = set()
        for region, w in sorted(self.watchers.items(), key=lambda kv: kv[0] != self.local):
            st = self.state(region)
            if st == "lost":
                continue
            cap = max(w.last_ok, self._started) + self._grace_s / 2
            for rid, obs in w.view.items():
                if st == "demoted" and obs.expires_at > cap:
                    obs = ObservedReplica(obs.record, cap)
                if rid in merged:
                    conflicts.add(rid)
                    if obs.record.region != region or merged[rid].record.region == source[rid]:
                        continue  # keep the copy from the record's own region
                merged[rid] = obs
                source[rid] = region
        for rid in conflicts - self._conflicts:
            log.warning("replica %r is in more than one region's registry", rid)
        self._conflicts = conflicts
        self._m.conflicts.set(len(conflicts))
        return merged

    def check(self) -> bool:
        """Update region states; True (and ``on_change``) when one changed."""
        changed = False
        for region in self.watchers:
            st = self.state(region)
            if st != self._states[region]:
                log.warning(
                    "region %s: %s -> %s (registry silent %.1f s)",
                    region,
                    self._states[region],
                    st,
                    self._clock() - max(self.watchers[region].last_ok, self._started),
                )
                self._states[region] = st
                self._m.state.labels(region=region).set(_LEVEL[st])
                changed = True
        if changed:
            self._on_change()
        return changed

    async def run(self) -> None:
        """Re-check the regions' states often enough to act within the grace."""
        interval = max(0.05, min(1.0, self._grace_s / 8))
        while True:
            self.check()
            await asyncio.sleep(interval)
