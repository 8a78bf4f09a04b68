"""Which replica holds which model: ``place(fleet, intent, demand, previous, now, cfg)``.

Pure. The models managed are those some replica can load (``ReplicaRecord.available``) and
those ``Intent.placement`` names; a model loaded without being available anywhere (a
server's fixed base model) is never touched. Per model, the replicas it needs:

- pinned: ``min_in(region)`` per region, loaded and awake whatever the demand;
- demand: ``ceil(rate / replica_rps)`` in all, at least one while requests wait for a load
  or the forecast wants it resident; ``max_replicas`` caps the demand (pins are kept even
  beyond it).

The needs are served in order: pinned before unpinned, then higher ``priority``, then each
model's first replica before anyone's second. A need goes to the replica that holds the
model awake or loading it, else asleep (a wake is fast); for a model with requests waiting,
to the one that serves them soonest (awake, else the sooner of a wake and the rest of a
load under way, so a wake that becomes possible takes over from a long load); else to the
zone with fewest of it and there the fastest load; ties by replica id. It must fit the
replica's GPU memory (less a reserve) next to what that replica keeps: a model the replica
holds is evicted only for a need of a higher level (pinned, then priority, then demand: a
model with requests waiting or served now (a recent rate of ``active_rps``, a request
within the forecast's active gap, or a time-of-day profile that expects a request within
the model's reload time) outranks one only the forecast wants, so a pre-warmed model never
keeps a waiting one out; a request held ``starving_after_s`` outranks a model served now; a
model the forecast expects a request for (``Forecast.expected``: a representative idle-time
histogram's window, or a recurring peak) outranks one kept only by the fixed keep-alive
after a request that predicts nothing: ``bench.coldstart`` waited 3.2 / 8.8 / 7.8 % -> 2.6
/ 8.4 / 6.7 % on seeds 1-3), and never within ``hold_s`` of its last change nor while its
load is under way (a server's load call runs to its end: unloading it frees nothing sooner;
up to twice its load time).

GPU memory is counted per GPU: replicas of a node whose GPUs have the same uuid share
it. A server asleep on its own (one model, ``wake_s > 0``: vLLM's level-1 sleep moves the
weights to host memory) takes none; it takes host memory: what the node's agent publishes
(``ReplicaRecord.host_mem_bytes``), else ``host_sleep_ratio`` times the node's GPU memory.

What no need keeps goes to sleep after ``scale_down_after_s`` (where its server can sleep:
``wake_s > 0``) and is unloaded ``unload_after_s`` later, or at once when its memory is
needed; a model that no longer fits the GPU goes to sleep instead where that frees its GPU
memory, and asleep on its own it is unloaded only when its host memory is needed.
Nothing changes state within ``hold_s`` of its last change, except upward (a load or a
wake for a need). Replicas that are stale, GPU-faulty or drained keep what they were last
asked for and get nothing new. A node has one desired entry per model, so at most one of
its replicas holds a given model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from controlplane.decide.eligibility import drained, gpu_faulty, is_fresh
from controlplane.decide.forecast import Forecast
from controlplane.decide.placement_pool import (
    Hold,
    Holding,
    Level,
    NodeMemory,
    Pool,
    Replica,
    build_pool,
)
from controlplane.fleet.desired import Desired
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent, ModelPlacement

__all__ = [
    "Hold",
    "Holding",
    "ModelDecision",
    "ModelDemand",
    "NodeMemory",
    "Placement",
    "PlacementConfig",
    "place",
]

_NO_PLACEMENT = ModelPlacement()


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """How placement turns demand into replicas and how fast it lets go."""

    replica_rps: float = 2.0
    """Requests per second one replica of a model is counted to serve."""
    mem_reserve: float = 0.1
    """Share of a replica's GPU memory that models may not take (KV cache, activations)."""
    hold_s: float = 60.0
    """No (replica, model) goes down (sleep, unload, eviction) within this of its last
    change: no flapping faster than this."""
    scale_down_after_s: float = 120.0
    """A replica of a model that no need keeps sleeps (or, where it cannot sleep, starts its
    unload wait) after this long without a need."""
    unload_after_s: float = 600.0
    """A sleeping model is unloaded after this long asleep (a model that cannot sleep: this
    long after ``scale_down_after_s``)."""
    default_load_s: float = 60.0
    """The load time assumed where a replica does not report one (for ranking only)."""
    active_rps: float = 0.2
    """A model whose recent rate (a decaying average) is at least this, that had a
    request within the forecast's active gap (``Forecast.active``), or whose time-of-day
    profile expects at least one request within the time to reload it
    (``Forecast.expected_rate`` x its fastest load: unloaded, it would be asked for again
    before it could be back), serves requests now:
    it keeps its memory against needs of the same priority; otherwise only the forecast
    keeps it, and requests waiting for another model may take its place. The decaying
    average alone dips under the bound between a steady model's Poisson arrivals:
    ``bench.coldstart`` saw models of 0.3 req/s evicted for one waiting request of a rare
    model, and 1-2 % of their requests wait for the reload."""
    starving_after_s: float = 60.0
    """A request held this long (half the activator's default bound of 120 s) outranks the
    models that serve requests now at the same priority: memory is taken from one of them
    rather than the request timing out. Before that it waits for memory a serving model
    gives up (``bench.coldstart``: without this bound, 41 requests of one seed waited more
    than 120 s; with it none, and fewer requests waited in all)."""
    host_sleep_ratio: float = 2.0
    """Host memory for the weights of servers asleep on their own (one model each: vLLM's
    level-1 sleep moves them off the GPU), as a multiple of the node's GPU memory (an
    8 x H100 node has 2 TB: 3.2x its 640 GB), on nodes whose agent publishes none
    (``aixds agent --host-memory``). Asleep, such a model takes host memory, not GPU
    memory, and is unloaded only when that memory is needed."""
    max_load_failures: int = 3
    """A replica that failed to load a model this many times in a row is not asked again
    (a permanent failure counts at once)."""


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """What the activator and the forecast say of one model."""

    rate: float = 0.0
    """Recent requests per second, all regions together."""
    waiting: int = 0
    """Requests held now until a replica of the model is ready."""
    waited_s: float = 0.0
    """How long the oldest of them has been held."""
    forecast: Forecast | None = None


@dataclass(frozen=True, slots=True)
class ModelDecision:
    """What placement did for one model, and why."""

    model: str
    wanted: Mapping[str, int]
    """Per region: the replicas wanted awake there (pins, plus demand where it was placed)."""
    awake: tuple[str, ...]
    """Replica ids asked to hold it loaded and awake (by id; spare ones not yet asleep too)."""
    sleeping: tuple[str, ...]
    unplaced: int
    """Needs no replica could take."""
    reasons: tuple[str, ...]


def _no_holdings() -> Mapping[str, Mapping[str, Holding]]:
    return MappingProxyType({})


def _no_desired() -> Mapping[str, Mapping[str, Desired]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Placement:
    """The result: what each node's agent is asked to hold, and the state for next time."""

    at: float = 0.0
    desired: Mapping[str, Mapping[str, Desired]] = field(default_factory=_no_desired)
    """Per node, per model: the node's desired entry (``Desired.server`` names the replica)."""
    holdings: Mapping[str, Mapping[str, Holding]] = field(default_factory=_no_holdings)
    """Per replica id, per model: what it is asked to hold and since when."""
    decisions: Mapping[str, ModelDecision] = field(default_factory=lambda: MappingProxyType({}))
    memory: Mapping[str, NodeMemory] = field(default_factory=lambda: MappingProxyType({}))
    """Per node, the GPU and host memory its models take once this run's decisions are
    carried out, and what they may take."""


@dataclass(frozen=True, slots=True, order=True)
class _Need:
    pinned_rank: int
    """0: pinned, 1: demand (pins first)."""
    neg_priority: int
    index: int
    urgency: int
    model: str
    region: str | None
    """The region a pin is for; ``None``: anywhere."""

    @property
    def level(self) -> Level:
        return (self.pinned_rank == 0, -self.neg_priority, 3 - self.urgency)


def place(
    fleet: FleetView,
    intent: Intent,
    demand: Mapping[str, ModelDemand],
    previous: Placement | None,
    now: float,
    cfg: PlacementConfig,
) -> Placement:
    """Desired entries per node and a decision per managed model (see the module doc)."""
    managed = _managed(fleet, intent)
    ok = {
        rid: is_fresh(o, now)
        and not gpu_faulty(o.record)
        and not drained(o.record, intent)
        and not o.record.draining
        for rid, o in fleet.items()
    }
    prev_holdings = previous.holdings if previous is not None else MappingProxyType({})
    prev_desired = previous.desired if previous is not None else MappingProxyType({})
    pool = build_pool(
        fleet,
        ok,
        managed,
        prev_holdings,
        prev_desired,
        cfg.mem_reserve,
        cfg.max_load_failures,
        cfg.default_load_s,
        cfg.host_sleep_ratio,
    )
    regions = sorted({o.record.region for o in fleet.values()})
    needs: list[_Need] = []
    reasons: dict[str, list[str]] = {m: [] for m in managed}
    for m in managed:
        needs += _needs(m, intent, demand.get(m, ModelDemand()), regions, cfg, reasons[m], pool)
    needs.sort()
    waiting = frozenset(m for m in managed if demand.get(m, ModelDemand()).waiting > 0)
    levels = _levels(needs)
    wanted: dict[str, dict[str, int]] = {m: {} for m in managed}
    unplaced: dict[str, int] = dict.fromkeys(managed, 0)
    for need in needs:
        rep = _choose(pool, need, levels, now, cfg.hold_s, waiting)
        m = need.model
        if rep is None:
            unplaced[m] += 1
            why = _why_unplaced(pool, need)
            if why not in reasons[m]:
                reasons[m].append(why)
            continue
        pool.commit(rep, m, _version(intent, m, rep), now)
        region = need.region if need.region is not None else rep.region
        wanted[m][region] = wanted[m].get(region, 0) + 1
    for m, cap in ((m, _placement(intent, m).max_replicas) for m in managed):
        pool.limit[m] = cap
    for m in managed:
        f = demand.get(m, ModelDemand()).forecast
        if f is not None and f.representative and f.idle_s is not None:
            pool.due[m] = max(0.0, f.prewarm_s - f.idle_s)
        elif f is not None and f.peak_in_s is not None:
            pool.due[m] = f.peak_in_s
    changes = pool.settle(levels, now, cfg.hold_s, cfg.scale_down_after_s, cfg.unload_after_s)
    for m, why in changes:
        reasons[m].append(why)
    return Placement(
        at=now,
        desired=pool.desired(),
        holdings=pool.holdings(),
        memory=pool.memory(),
        decisions=MappingProxyType(
            {
                m: ModelDecision(
                    model=m,
                    wanted=MappingProxyType(dict(sorted(wanted[m].items()))),
                    awake=pool.holders(m, Hold.LOADED),
                    sleeping=pool.holders(m, Hold.SLEEPING),
                    unplaced=unplaced[m],
                    reasons=tuple(reasons[m]),
                )
                for m in managed
            }
        ),
    )


def _managed(fleet: FleetView, intent: Intent) -> list[str]:
    names = {a.name for o in fleet.values() for a in o.record.available}
    return sorted(names | set(intent.placement))


def _placement(intent: Intent, model: str) -> ModelPlacement:
    return intent.placement.get(model, _NO_PLACEMENT)


def _version(intent: Intent, model: str, rep: Replica) -> str:
    rollout = intent.rollouts.get(model)
    if rollout is not None and rollout.stable:
        return rollout.stable
    avail = rep.available.get(model)
    return avail.version if avail is not None else ""


def _needs(
    m: str,
    intent: Intent,
    d: ModelDemand,
    regions: list[str],
    cfg: PlacementConfig,
    reasons: list[str],
    pool: Pool,
) -> list[_Need]:
    p = _placement(intent, m)
    named = {r for r in p.min_resident if r}
    pins = {r: p.min_in(r) for r in sorted(set(regions) | named) if p.min_in(r) > 0}
    for r, n in pins.items():
        reasons.append(f"pinned {n} in {r}")
    rate = d.rate if math.isfinite(d.rate) and d.rate > 0 else 0.0
    # Whether the model stays resident at all is the forecast's call (keep-alive, pre-warm,
    # profile) or a held request's: the decaying recent rate alone never reaches 0, so it
    # only says how many replicas an active model needs.
    if d.forecast is not None:
        active = d.forecast.wanted
        reasons.append(d.forecast.reason)
    else:
        active = rate > 0
    if d.waiting > 0:
        active = True
        reasons.append(f"{d.waiting} waiting request{'s' if d.waiting != 1 else ''}")
    count = max(1, math.ceil(rate / cfg.replica_rps)) if active else 0
    if active and rate:
        reasons.append(f"{rate:.2g} req/s → {count} replica{'s' if count != 1 else ''}")
    pinned = sum(pins.values())
    extra = max(0, count - pinned)
    if p.max_replicas and pinned + extra > p.max_replicas:
        extra = max(0, p.max_replicas - pinned)
        reasons.append(f"max_replicas {p.max_replicas}")
    serving = rate >= cfg.active_rps or (d.forecast is not None and d.forecast.active)
    if not serving and d.forecast is not None and d.forecast.expected_rate > 0:
        reload_s = pool.reload_s(m)
        due = d.forecast.expected_rate * reload_s
        if due >= 1.0:  # unloaded, it would be asked for again before it could be back
            serving = True
            reasons.append(f"{due:.1f} requests expected within a {reload_s:.0f} s reload")
    starving = d.waiting > 0 and d.waited_s >= cfg.starving_after_s
    if starving:
        reasons.append(f"held {d.waited_s:.0f} s: outranks models served now")
    expected = d.forecast is not None and d.forecast.expected
    urgency = 0 if starving else 1 if d.waiting > 0 or serving else 2 if expected else 3
    out = [_Need(0, -p.priority, i, urgency, m, r) for r, n in pins.items() for i in range(n)]
    out += [_Need(1, -p.priority, i, urgency, m, None) for i in range(extra)]
    return out


def _levels(needs: list[_Need]) -> dict[str, Level]:
    """Per model, the highest level of its needs (what protects a replica holding it)."""
    out: dict[str, Level] = {}
    for n in needs:
        out[n.model] = max(out.get(n.model, n.level), n.level)
    return out


def _choose(
    pool: Pool,
    need: _Need,
    levels: Mapping[str, Level],
    now: float,
    hold_s: float,
    waiting: frozenset[str],
) -> Replica | None:
    """The replica for ``need``: one that holds the model awake or loading it, else the
    fastest wake; for a model with requests waiting, the one that serves it soonest (awake,
    else the fastest wake or the load under way with the least left); else a load in the
    zone with fewest of the model (fastest load); ties by replica id."""
    m = need.model
    best: tuple[int, int, float, str] | None = None
    chosen: Replica | None = None
    for rep in pool.holders_of(m, need.region):
        if not pool.free_for(rep, m):
            continue
        asleep = rep.held[m].state is Hold.SLEEPING
        if m in waiting:  # requests are held: whichever serves them first
            back = rep.ready_in(m, now, pool.default_load_s)
        else:  # ahead of demand: a load under way ends in time, no second copy for it
            back = rep.wake_s(m) if asleep else 0.0
        key = (int(asleep or back > 0), pool.in_zone(m, rep), back, rep.rid)
        if (best is None or key < best) and pool.fits(rep, m, need.level, levels, now, hold_s):
            best, chosen = key, rep
    if chosen is not None:
        return chosen
    for zone in pool.loaders(m, need.region):
        count = pool.in_zone(m, zone[0])
        for rep in zone:  # the first that can take it is the zone's best
            key = (2, count, rep.load_s(m, pool.default_load_s), rep.rid)
            if best is not None and key >= best:
                break
            if pool.free_for(rep, m) and pool.fits(rep, m, need.level, levels, now, hold_s):
                best, chosen = key, rep
                break
    return chosen


def _why_unplaced(pool: Pool, need: _Need) -> str:
    where = f" in {need.region}" if need.region is not None else ""
    if not any(pool.free_for(r, need.model) for r in pool.candidates(need.model, need.region)):
        return f"no eligible replica{where} can load it"
    return f"no GPU memory for it on any replica{where}"
