"""The placement loop: demand in, desired-models keys out, on the one acting replica.

Every ``interval_s`` the replica holding the placement lock:

1. counts each model's requests of the last complete seconds: load reports (LRS, per
   cluster, all Envoys, ``fleet.load_store``) plus requests that reached an activator
   (models with no cluster yet), and the requests activators hold now;
2. folds them into each model's demand history (``decide.forecast``; kept in Redis, bounded
   by construction, so the next acting replica goes on from it) and forecasts, with the
   model's measured load time as the lead;
3. runs ``decide.placement.place`` and writes what changed into the nodes'
   ``aixds:v1:desired:<node>`` hashes: only fields of managed models (models some replica
   can load, or that intent places); a managed field placement no longer lists is
   deleted once its model is gone;
4. publishes the decision (per model: wanted, awake, asleep, reasons, forecast) for
   ``GET /v1/placement`` on any replica, and as metrics.

Redis unreachable: the round is skipped (``Acting.tick``); agents keep their last desired
keys, so nothing is loaded or unloaded meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from redis.exceptions import RedisError

from controlplane.activator.demand import read_arrivals, read_held_since, read_waiting
from controlplane.decide.forecast import (
    DemandHistory,
    Forecast,
    ForecastConfig,
    HistoryError,
    forecast,
    history_from_doc,
    history_to_doc,
    new_history,
    observe,
)
from controlplane.decide.placement import ModelDemand, Placement, PlacementConfig, place
from controlplane.fleet import schema
from controlplane.fleet.desired import DesiredError, desired_json, parse_desired
from controlplane.fleet.leader import Lock
from controlplane.fleet.load_store import LoadStore
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import version_cluster
from controlplane.runtime.acting import Acting

log = logging.getLogger(__name__)

REPORT_LAG_S = 2
"""Load reports of a second are complete this long after it (LRS interval + flush)."""
HELD_ACTIVITY = 1e-3
"""What a tick with requests held (waiting for a load) adds to a model's request count: it
makes the tick active, so the idle gap ends when requests arrive, not when they are served."""
SAVE_EVERY_S = 10.0
"""Demand histories are written back to Redis this often (and on leaving)."""


@dataclass(frozen=True, slots=True)
class PlacementSettings:
    enabled: bool = True
    interval_s: float = 1.0
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)


class PlacementMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "aixds_placement_replicas",
            "Replicas placement asks to hold a model, by state (awake, sleeping)",
            ["model", "state"],
            registry=registry,
        )
        self.unplaced = Gauge(
            "aixds_placement_unplaced",
            "Replicas a model needs that no replica could take (GPU memory, candidates)",
            ["model"],
            registry=registry,
        )
        self.writes = PromCounter(
            "aixds_placement_writes",
            "Desired-model entries placement wrote or deleted",
            ["op"],
            registry=registry,
        )
        self.keep_alive = Gauge(
            "aixds_forecast_keep_alive_seconds",
            "How long a model stays resident after its last request (hybrid histogram)",
            ["model"],
            registry=registry,
        )
        self.prewarm = Gauge(
            "aixds_forecast_prewarm_seconds",
            "After its last request, when a model is loaded again ahead of the next (0: kept)",
            ["model"],
            registry=registry,
        )
        self.expected = Gauge(
            "aixds_forecast_expected_rps",
            "Request rate the time-of-day profile expects within the model's load time",
            ["model"],
            registry=registry,
        )
        self.memory = Gauge(
            "aixds_placement_memory_bytes",
            "Per node, GPU or host memory (memory: gpu, host) its models take once the last "
            "decision is carried out, or may take (of: used, usable; host: for the weights "
            "of servers asleep on their own)",
            ["node", "memory", "of"],
            registry=registry,
        )
        self.leader = Gauge(
            "aixds_placement_leader",
            "1 while this control-plane replica decides model placement (holds the lock)",
            registry=registry,
        )
        self.bad_history = PromCounter(
            "aixds_demand_history_malformed",
            "Stored demand histories that could not be read (started over)",
            registry=registry,
        )


def model_of(cluster: str) -> str | None:
    """The model of a model-version cluster (``model@version``, with or without the
    affinity suffix); None for other clusters (the activator)."""
    model, sep, _ = version_cluster(cluster).rpartition("@")
    return model if sep and model else None


class PlacementLoop:
    def __init__(
        self,
        client: aioredis.Redis,
        fleet: Callable[[], FleetView],
        intent: Callable[[], Intent],
        loads: LoadStore,
        lock: Lock,
        metrics: PlacementMetrics,
        settings: PlacementSettings = PlacementSettings(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._fleet = fleet
        self._intent = intent
        self._loads = loads
        self._acting = Acting(lock, metrics.leader, "placement")
        self._m = metrics
        self._s = settings
        self._clock = clock
        self.previous: Placement | None = None
        self.histories: dict[str, DemandHistory] | None = None
        self.last: dict[str, Any] = {}
        self._counted_until = 0
        self._saved_at = 0.0
        self._labels: set[str] = set()
        self._memory_labels: set[tuple[str, str, str]] = set()

    async def run(self) -> None:
        if not self._s.enabled:
            return
        try:
            while True:
                await self._acting.tick(self.round)
                await asyncio.sleep(self._s.interval_s)
        finally:
            await self.leave()

    async def leave(self) -> None:
        """Save the demand histories (if acting) and give the lock up, so the next replica
        goes on from them. Bounded, and quiet when Redis is gone."""
        if self._acting.leader and self.histories:
            with contextlib.suppress(RedisError, OSError, asyncio.CancelledError):
                await asyncio.wait_for(self._save_histories(), timeout=1.0)
        await self._acting.release()

    async def round(self) -> None:
        if not await self._acting.hold():
            self.previous, self.histories = None, None  # another replica acts
            return
        now = self._clock()
        fleet, intent = self._fleet(), self._intent()
        if self.histories is None:
            self.histories = await self._load_histories()
            self._counted_until = math.floor(now) - REPORT_LAG_S
        counts, waiting = await self._demand(now)
        held_since = await read_held_since(self._r) if waiting else {}
        fc = self._s.forecast
        models = set(self.histories) | set(counts) | set(waiting) | managed_models(fleet, intent)
        demand: dict[str, ModelDemand] = {}
        forecasts: dict[str, Forecast] = {}
        for m in sorted(models):
            # A request held for a load is activity from the tick it is first seen waiting
            # (LRS counts it only when served, one load time later): a token count marks
            # the tick active without adding to the rate.
            seen = counts.get(m, 0) + (HELD_ACTIVITY if waiting.get(m) else 0.0)
            h = observe(self.histories.get(m) or new_history(fc), now, seen, fc)
            self.histories[m] = h
            f = forecast(h, now, fc, lead_s(fleet, m, self._s.placement.default_load_s))
            forecasts[m] = f
            since = held_since.get(m)
            demand[m] = ModelDemand(
                rate=f.recent_rate,
                waiting=waiting.get(m, 0),
                waited_s=max(0.0, now - since) if since is not None and waiting.get(m) else 0.0,
                forecast=f,
            )
        result = place(fleet, intent, demand, self.previous, now, self._s.placement)
        await self._write(fleet, intent, result)
        self.previous = result
        self.last = decision_doc(result, forecasts, waiting, self._acting.owner)
        await self._r.set(schema.PLACEMENT_KEY, json.dumps(self.last), ex=60)
        if now - self._saved_at >= SAVE_EVERY_S:
            await self._save_histories()
            self._saved_at = now
        self._metrics(result, forecasts)

    async def _demand(self, now: float) -> tuple[dict[str, int], dict[str, int]]:
        """Requests per model in the seconds completed since the last round; held now."""
        until = math.floor(now) - REPORT_LAG_S
        seconds = range(self._counted_until, until)
        counts: Counter[str] = Counter()
        if seconds:
            for b in await self._loads.read(seconds.start, seconds.stop - 0.5):
                model = model_of(b.cluster)
                if model is not None:
                    counts[model] += b.success + b.error
            counts.update(await read_arrivals(self._r, seconds))
            self._counted_until = until
        return dict(counts), await read_waiting(self._r)

    async def _write(self, fleet: FleetView, intent: Intent, result: Placement) -> None:
        managed = managed_models(fleet, intent)
        nodes = {o.record.node for o in fleet.values()} | set(result.desired)
        for node in sorted(nodes):
            key = schema.desired_key(node)
            have = {_text(k): _text(v) for k, v in (await self._r.hgetall(key)).items()}
            want = {m: desired_json(d) for m, d in result.desired.get(node, {}).items()}
            sets = {m: v for m, v in want.items() if have.get(m) != v and not _same(have.get(m), v)}
            dels = [m for m in have if m in managed and m not in want]
            if sets:
                await self._r.hset(key, mapping={m: v for m, v in sets.items()})
                self._m.writes.labels("set").inc(len(sets))
                log.info(
                    "placement: %s <- %s", node, ", ".join(f"{m}={v}" for m, v in sets.items())
                )
            if dels:
                await self._r.hdel(key, *dels)
                self._m.writes.labels("delete").inc(len(dels))
                log.info("placement: %s forgets %s", node, ", ".join(dels))

    async def _load_histories(self) -> dict[str, DemandHistory]:
        out: dict[str, DemandHistory] = {}
        for k, v in (await self._r.hgetall(schema.DEMAND_KEY)).items():
            try:
                out[_text(k)] = history_from_doc(json.loads(v))
            except (HistoryError, ValueError) as e:
                self._m.bad_history.inc()
                log.warning("demand history of %s unreadable, starting over: %s", _text(k), e)
        return out

    async def _save_histories(self) -> None:
        if self.histories:
            docs = {m: json.dumps(history_to_doc(h)) for m, h in self.histories.items()}
            await self._r.hset(schema.DEMAND_KEY, mapping={m: v for m, v in docs.items()})

    def _metrics(self, result: Placement, forecasts: Mapping[str, Forecast]) -> None:
        seen = set()
        for m, d in result.decisions.items():
            seen.add(m)
            self._m.replicas.labels(m, "awake").set(len(d.awake))
            self._m.replicas.labels(m, "sleeping").set(len(d.sleeping))
            self._m.unplaced.labels(m).set(d.unplaced)
        for m, f in forecasts.items():
            seen.add(m)
            self._m.keep_alive.labels(m).set(f.keep_alive_s)
            self._m.prewarm.labels(m).set(f.prewarm_s)
            self._m.expected.labels(m).set(f.expected_rate)
        for m in self._labels - seen:
            for g in (self._m.keep_alive, self._m.prewarm, self._m.expected, self._m.unplaced):
                g.remove(m)
            for state in ("awake", "sleeping"):
                self._m.replicas.remove(m, state)
        self._labels = seen
        shown: set[tuple[str, str, str]] = set()
        for node, mem in result.memory.items():
            for labels, value in (
                ((node, "gpu", "used"), mem.gpu_used),
                ((node, "gpu", "usable"), mem.gpu_cap),
                ((node, "host", "used"), mem.host_used),
                ((node, "host", "usable"), mem.host_cap),
            ):
                if value is not None:  # unknown: no sample
                    self._m.memory.labels(*labels).set(value)
                    shown.add(labels)
        for labels in self._memory_labels - shown:
            self._m.memory.remove(*labels)
        self._memory_labels = shown


def managed_models(fleet: FleetView, intent: Intent) -> set[str]:
    """Models placement decides for: some replica can load them, or intent places them."""
    out = set(intent.placement)
    for o in fleet.values():
        out.update(a.name for a in o.record.available)
    return out


def lead_s(fleet: FleetView, model: str, default: float) -> float:
    """How long bringing ``model`` up takes: the longest measured load among replicas that
    list it (a wake is faster, so this errs early), else ``default``."""
    loads = [a.load_s for o in fleet.values() for a in o.record.available if a.name == model]
    known = [x for x in loads if x > 0]
    return max(known) if known else default


def decision_doc(
    result: Placement, forecasts: Mapping[str, Forecast], waiting: Mapping[str, int], owner: str
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for m in sorted(set(result.decisions) | set(forecasts)):
        d = result.decisions.get(m)
        f = forecasts.get(m)
        models[m] = {
            "wanted": dict(d.wanted) if d else {},
            "awake": list(d.awake) if d else [],
            "sleeping": list(d.sleeping) if d else [],
            "unplaced": d.unplaced if d else 0,
            "reasons": list(d.reasons) if d else [],
            "waiting": waiting.get(m, 0),
            "forecast": None
            if f is None
            else {
                "wanted": f.wanted,
                "reason": f.reason,
                "keep_alive_s": round(f.keep_alive_s, 1),
                "prewarm_s": round(f.prewarm_s, 1),
                "representative": f.representative,
                "expected": f.expected,
                "recent_rps": round(f.recent_rate, 3),
                "expected_rps": round(f.expected_rate, 3),
                "idle_s": None if f.idle_s is None else round(f.idle_s, 1),
                "peak_in_s": None if f.peak_in_s is None else round(f.peak_in_s, 1),
            },
        }
    nodes = {
        node: {
            "gpu_used_bytes": round(mem.gpu_used),
            "gpu_bytes": None if mem.gpu_cap is None else round(mem.gpu_cap),
            "host_used_bytes": round(mem.host_used),
            "host_bytes": None if mem.host_cap is None else round(mem.host_cap),
            "host_from": "agent" if mem.host_published else "ratio",
        }
        for node, mem in result.memory.items()
    }
    return {"at": result.at, "decided_by": owner, "models": models, "nodes": nodes}


def _same(have: str | None, want: str) -> bool:
    """Equal as desired entries (an operator may have written the same entry differently)."""
    if have is None:
        return False
    try:
        return parse_desired("m", have) == parse_desired("m", want)
    except DesiredError:
        return False


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
