"""Cold start: how often a request waits for its model, with aixds placement vs loading on demand.

A discrete-time simulation (1 s ticks) that drives the REAL pure decision code,
``decide.forecast`` (``observe``/``forecast``) and ``decide.placement.place``, on a simulated
fleet. It starts no processes: the real path (agents, servers, Redis, the placement loop) is
covered by the e2e tests; this measures the policy over days of demand in a minute.

Fleet: 6 nodes (2 zones) with one 80 GB GPU each; 40 models of 8-40 GB (about twice the
fleet's GPU memory, so not all fit at once), loads of 15-60 s, wakes of 1 s. On each GPU,
one server per model (vLLM: one model per server), all sharing its memory: asleep, a
server's weights are in host memory (``--host-ratio``, 2x the GPU's) and its GPU memory is
free. ``--one-server``: one server per node serves every model instead, and sleeps only as
a whole, so a model asleep on it keeps its GPU memory (the layout before shared GPUs).
Demand (``coldstart_trace``): a seeded trace per model over compressed days of 600 s.
Popularity is Zipf (``--zipf``, exponent 1.5: the most popular model takes 43 % of the
requests, the least 0.2 %) over ``--rate`` requests per second in all (2); each model's
share comes as one of four shapes: steady Poisson (the most popular ranks), a daily peak,
periodic bursts, or the Poisson tail (the least popular ranks). The first
``--learn-days`` are learning; requests after them are measured.

Each tick the simulated agents carry out what the policy asks, as the real agent does: a
load ends ``load_s`` after it started, a wake ``wake_s`` after; a ready model is drained
(``DRAIN_S``, the agent's ``--drain``) before it goes to sleep (its wake time) or is unloaded
(``UNLOAD_S``), and a load or a wake on a GPU starts only once the sleeps and unloads under
way there are done (the weights coming up never meet those going down). A load or a wake
under way is not cancelled (a server's load call runs to its end): an unload asked for
meanwhile follows it, and holds back the GPU's other loads and wakes until then. Memory
being freed counts as resident. A waking server is reported sleeping, as the agent does.
A request is *waited* when no replica has its model awake when it arrives; it is held until
the first replica of its model is ready. Its TTFT is ``--base-ttft`` (0.3 s) plus that wait.
It waited *on a load* when that replica was loading the model (not waking it from sleep,
a second): the issue's "requests that waited on a load"; requests still held at the end
count as on a load.

Policies, on the same trace:

- ``warm``: every model always resident (infinite memory): the TTFT floor;
- ``oracle``: knows every arrival ahead (not an online policy): loads each model just in
  time for its next request, unloads it when a reload would come in time: what the
  fleet's memory allows with a perfect forecast and loads alone (it never sleeps a model,
  so aixds, which can, may beat it; greedy, so a reference, not a bound);
- ``reactive``: a plain on-demand loader: a held request starts a load (on the replica with
  room, else evicting least-recently-used models), a model is unloaded
  ``fixed_keep_alive_s`` after its last request; no pre-warm, no sleep;
- ``aixds``: per tick, each model's requests go to ``observe``, ``forecast(lead_s=load_s)``
  and ``ModelDemand(rate, waiting=held requests, forecast)`` go to ``place``, whose
  ``Placement.desired`` the agents carry out (loaded / sleeping / unloaded). Nothing is
  pinned unless ``--pin`` (the steadiest model, one replica).

The table per policy: measured requests, waited % (any wait), on load % (waited on a
load), TTFT p50/p99, mean/p99 wait of the waited requests, GPU model-seconds resident
(loading, awake, or asleep where that keeps GPU memory: a cost), host model-seconds
asleep, loads, wakes. The last line:

    cold start: waited X.X%, TTFT p99 vs warm Y.YYx, resident vs reactive Z.ZZx

X: aixds' share of requests that waited on a load (a wait on a wake counts in TTFT, and in
the ``waited`` column); Y: aixds TTFT p99 / warm TTFT p99 (1.00: no cold start reaches the
p99); Z: aixds GPU model-seconds resident / reactive's (the issue's target: at most 1.1,
keeping models resident ahead of demand may cost at most 10 % more GPU time).

    python -m bench.coldstart                 # 6 days, seed 1
    python -m bench.coldstart --smoke         # 3 short days, 12 models (tests)
    python -m bench.coldstart --seed 7 --days 8 --pin
    python -m bench.coldstart --zipf 1.0 --rate 1   # flatter popularity, fewer requests
    python -m bench.coldstart --seed 2 --explain   # also: why each of aixds' waits began

``--explain`` sorts aixds' waits by how they began (the first request that found its model
not awake; the others held with it wait on the same load): unforeseen (nothing wanted the
model before), foreseen less than a load time ahead, foreseen but no GPU memory to load it,
foreseen but loaded late for memory. The forecast's misses and placement's are told apart.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from bench.coldstart_trace import (
    GB,
    KINDS,
    TOTAL_RATE,
    ZIPF_S,
    ModelSpec,
    Trace,
    make_models,
    make_trace,
)
from controlplane.decide.forecast import DemandHistory, ForecastConfig, forecast, new_history
from controlplane.decide.forecast import observe as observe_demand
from controlplane.decide.placement import ModelDemand, Placement, PlacementConfig, place
from controlplane.fleet.model import (
    AvailableModel,
    GpuStats,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.intent import Intent, ModelPlacement

SERVER = "vllm-8000"
HOLD_S = 120.0
"""The activator's default bound on holding a request (``aixds serve --hold``)."""
DRAIN_S = 2.0
"""What an agent waits before it puts a ready server to sleep or unloads it (``--drain``:
Envoy drains it first)."""
UNLOAD_S = 1.0
"""An unload's own time, after the drain (a sleep takes the model's wake time)."""
LAST_LINE = "cold start: waited {x:.1f}%, TTFT p99 vs warm {y:.2f}x, resident vs reactive {z:.2f}x"

FORECAST = ForecastConfig(
    bin_s=1.0, n_bins=240, day_s=600.0, n_slots=60, fixed_keep_alive_s=60.0, rate_tau_s=10.0
)
"""Compressed time: a 600 s day in 10 s slots, idle times up to 240 s in 1 s bins."""
PLACEMENT = PlacementConfig(hold_s=10.0, scale_down_after_s=10.0, unload_after_s=60.0)
"""Scale-down compressed like the days (the loads are not)."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How the simulated servers sit on each node's GPU."""

    per_model: bool = True
    """One server per model, all on the node's GPU (vLLM: one model per server, several
    servers per GPU): asleep, a server's weights are in host memory and its GPU memory is
    free. False: one server serves every model and sleeps only as a whole, so a model
    asleep on it keeps its GPU memory."""
    host_ratio: float = 2.0
    """Host memory for sleeping weights, as a multiple of the GPU's (``PlacementConfig``'s
    ``host_sleep_ratio``)."""


PER_MODEL = Layout()


def server_of(model: str, layout: Layout) -> str:
    return f"vllm-{model}" if layout.per_model else SERVER


@dataclass(slots=True)
class Slot:
    """One model on one replica: ``loading``/``waking`` (from ``start`` until ``done_at``),
    ``ready`` or ``sleeping``."""

    state: str
    done_at: float = -math.inf
    start: float = -math.inf
    """A load or wake asked for while the GPU still frees memory starts once it is free."""


@dataclass
class Stats:
    policy: str
    waits: list[float] = field(default_factory=list)
    """Per measured request, its wait (0: its model was awake)."""
    kinds: list[str] = field(default_factory=list)
    """Per measured request (as ``waits``), its model's demand shape."""
    on_load: list[bool] = field(default_factory=list)
    """Per measured request (as ``waits``), whether it waited on a load (not a wake)."""
    resident_s: float = 0.0
    """GPU model-seconds: loading, waking, awake, or asleep where sleep keeps GPU memory."""
    asleep_s: float = 0.0
    """Host model-seconds: asleep on a server of its own (weights in host memory)."""
    loads: int = 0
    wakes: int = 0
    censored: int = 0
    """Requests still held at the end (their wait: until the end)."""
    overcommit_s: int = 0
    """Ticks a replica held more than its GPU memory (should stay 0)."""
    episodes: list[tuple[str, float]] = field(default_factory=list)
    """Measured waits that began a wait: (model, arrival) of a request that found its model
    not awake and no earlier request of it held (the others wait on the same load)."""


class Sim:
    """The simulated fleet and the requests it holds; policies change it through
    ``load``/``wake``/``sleep``/``unload``."""

    def __init__(
        self,
        models: Sequence[ModelSpec],
        nodes: Sequence[tuple[str, str]],
        gpu_bytes: int,
        measure_from: float,
        policy: str,
        layout: Layout,
    ) -> None:
        self.specs = {m.name: m for m in models}
        self.zones = dict(nodes)
        self.gpu_bytes = gpu_bytes
        self.layout = layout
        self.slots: dict[str, dict[str, Slot]] = {n: {} for n, _ in nodes}
        self.held: dict[str, list[float]] = {m.name: [] for m in models}
        self.last_used: dict[str, float] = {}
        self.measure_from = measure_from
        self.stats = Stats(policy)
        self.now = 0.0
        """The tick the policy acts in (``run`` sets it)."""
        self.freeing: dict[str, list[float]] = {n: [] for n, _ in nodes}
        """Per node, when each sleep or unload under way frees its GPU memory: as the
        agent does, a load or a wake on that GPU starts only after them all."""

    def _measured(self, t: float) -> bool:
        return t >= self.measure_from

    def record(self, m: str, at: float, wait: float, on_load: bool = False) -> None:
        if self._measured(at):
            self.stats.waits.append(max(0.0, wait))
            self.stats.kinds.append(self.specs[m].kind)
            self.stats.on_load.append(on_load and wait > 0)

    # -- agents --------------------------------------------------------------------------

    def _start(self, node: str, t: float) -> float:
        """When a load or wake asked for at ``t`` starts on ``node``: once the sleeps and
        unloads under way there are done (the agent's rule: the weights coming up never
        meet those going down)."""
        pending = [f for f in self.freeing[node] if f > t]
        self.freeing[node] = pending
        return max(pending, default=t)

    def load(self, node: str, m: str, t: float) -> None:
        start = self._start(node, t)
        self.slots[node][m] = Slot("loading", start + self.specs[m].load_s, start)
        self.stats.loads += self._measured(t)

    def wake(self, node: str, m: str, t: float) -> None:
        start = self._start(node, t)
        self.slots[node][m] = Slot("waking", start + self.specs[m].wake_s, start)
        self.stats.wakes += self._measured(t)

    def sleep(self, node: str, m: str) -> None:
        """A ready model: drained, then asleep (its server's GPU memory free once the sleep
        is done, where the server serves it alone)."""
        self.slots[node][m] = Slot("sleeping")
        if self.layout.per_model:
            self.freeing[node].append(self.now + DRAIN_S + self.specs[m].wake_s)

    def unload(self, node: str, m: str) -> None:
        """Drained if it serves, then unloaded; its GPU memory is free after both. A load or
        a wake under way is not cancelled (a server's load call runs to its end): the
        unload follows it."""
        s = self.slots[node].pop(m, None)
        if s is None or (s.state == "sleeping" and self.layout.per_model):
            return  # asleep on its own: host memory only
        busy = s.state in ("loading", "waking")
        start = max(self.now, s.done_at if busy else s.start)
        done = start + (DRAIN_S if s.state == "ready" else 0.0) + UNLOAD_S
        self.freeing[node].append(done)

    def used(self, node: str) -> int:
        """GPU memory taken on ``node`` (asleep, a server of its own holds none)."""
        return sum(
            self.specs[m].mem_bytes
            for m, s in self.slots[node].items()
            if s.state != "sleeping" or not self.layout.per_model
        )

    def asleep_bytes(self, node: str) -> int:
        """Host memory taken on ``node`` by servers asleep on their own."""
        if not self.layout.per_model:
            return 0
        return sum(
            self.specs[m].mem_bytes for m, s in self.slots[node].items() if s.state == "sleeping"
        )

    def awake_at(self, m: str) -> float:
        """When the first replica has ``m`` awake (``-inf``: now; ``inf``: none is coming)."""
        best = math.inf
        for slots in self.slots.values():
            s = slots.get(m)
            if s is not None and s.state != "sleeping":
                best = min(best, s.done_at)
        return best

    # -- requests ------------------------------------------------------------------------

    def arrive(self, m: str, at: float) -> None:
        if self.awake_at(m) <= at:
            self.last_used[m] = at
            self.record(m, at, 0.0)
        else:
            if not self.held[m] and self._measured(at):
                self.stats.episodes.append((m, at))
            self.held[m].append(at)

    def finish(self, until: float) -> None:
        """Loads and wakes done by ``until`` become ready; their held requests are served."""
        ready: dict[str, tuple[float, bool]] = {}
        for slots in self.slots.values():
            for m, s in slots.items():
                if s.state in ("loading", "waking") and s.done_at <= until:
                    first = (s.done_at, s.state == "loading")  # a wake first on a tie
                    ready[m] = min(ready.get(m, first), first)
                    s.state = "ready"
        for m, (done, loaded) in ready.items():
            for at in self.held[m]:
                self.record(m, at, done - at, on_load=loaded)
            if self.held[m]:
                self.last_used[m] = done
            self.held[m] = []

    def censor(self, end: float) -> None:
        """Requests still held at the end count as waited until then (a lower bound)."""
        for m, held in self.held.items():
            for at in held:
                self.record(m, at, end - at, on_load=True)
            self.stats.censored += sum(self._measured(at) for at in held)
            self.held[m] = []

    def account(self, t: float) -> None:
        if not self._measured(t):
            return
        host = self.gpu_bytes * self.layout.host_ratio
        for node, slots in self.slots.items():
            asleep = (
                sum(s.state == "sleeping" for s in slots.values()) if self.layout.per_model else 0
            )
            waiting = sum(s.start > t for s in slots.values())  # for memory being freed
            freeing = sum(f > t for f in self.freeing[node])
            self.stats.resident_s += len(slots) - asleep - waiting + freeing
            self.stats.asleep_s += asleep
            self.stats.overcommit_s += self.used(node) > self.gpu_bytes
            self.stats.overcommit_s += self.asleep_bytes(node) > host

    # -- what the control plane sees -----------------------------------------------------

    def observed(self, t: float) -> dict[str, ObservedReplica]:
        """The replica records: per node, one server per model on the node's GPU (its
        uuid), or one server serving every model (``Layout.per_model`` False)."""
        avail = {
            m.name: AvailableModel(m.name, "v1", m.mem_bytes, m.load_s, m.wake_s)
            for m in self.specs.values()
        }
        states = {
            "loading": ModelState.LOADING,
            "waking": ModelState.SLEEPING,  # as the agent reports a waking server
            "ready": ModelState.READY,
            "sleeping": ModelState.SLEEPING,
        }
        out = {}
        for node, slots in self.slots.items():
            gpus = (GpuStats(index=0, uuid=f"GPU-{node}", mem_total_bytes=self.gpu_bytes),)
            servers = (
                [(server_of(m, self.layout), (m,)) for m in self.specs]
                if self.layout.per_model
                else [(SERVER, tuple(self.specs))]
            )
            for server, names in servers:
                rid = f"{node}/{server}"
                held = sorted(m for m in names if m in slots)
                rec = ReplicaRecord(
                    replica_id=rid,
                    node=node,
                    region="r0",
                    zone=self.zones[node],
                    address="10.0.0.1",
                    port=8000,
                    server_kind=ServerKind.VLLM,
                    models=tuple(ModelInfo(m, "v1", states[slots[m].state]) for m in held),
                    gpus=gpus,
                    timestamp=t,
                    available=tuple(avail[m] for m in names),
                )
                out[rid] = ObservedReplica(rec, expires_at=t + 1e9)
        return out


Decide = Callable[[Sim, int, Mapping[str, int]], None]
"""A policy: at tick ``t``, given each model's requests of ``[t - 1, t)``, change the sim."""


def run(
    decide: Decide | None,
    policy: str,
    models: Sequence[ModelSpec],
    trace: Trace,
    nodes: Sequence[tuple[str, str]],
    gpu_bytes: int,
    end_s: int,
    measure_from: float,
    layout: Layout = PER_MODEL,
) -> Stats:
    """One policy over the trace (``decide`` None: ``warm``, every model always awake)."""
    sim = Sim(models, nodes, gpu_bytes, measure_from, policy, layout)
    arrivals = sorted((a, m) for m, ats in trace.items() for a in ats)
    if decide is None:
        for at, m in arrivals:
            if at < end_s:
                sim.record(m, at, 0.0)
        sim.stats.resident_s = len(models) * max(0.0, end_s - measure_from)
        return sim.stats
    i, counts = 0, {m.name: 0 for m in models}
    for t in range(end_s):
        sim.now = t
        decide(sim, t, counts)
        sim.account(t)
        counts = dict.fromkeys(counts, 0)
        while i < len(arrivals) and arrivals[i][0] < t + 1:
            at, m = arrivals[i]
            sim.arrive(m, at)
            counts[m] += 1
            i += 1
        sim.finish(t + 1)
    sim.censor(end_s)
    return sim.stats


def reactive(keep_alive_s: float, reserve: float) -> Decide:
    """Load on a held request (room, else evict LRU), unload ``keep_alive_s`` after use."""

    def decide(sim: Sim, t: int, counts: Mapping[str, int]) -> None:
        cap = sim.gpu_bytes * (1 - reserve)
        for node, slots in sim.slots.items():
            for m, s in list(slots.items()):
                if s.state == "ready" and t - sim.last_used.get(m, -math.inf) >= keep_alive_s:
                    sim.unload(node, m)
        waiting = sorted((h[0], m) for m, h in sim.held.items() if h)
        for _, m in waiting:
            if sim.awake_at(m) < math.inf:
                continue  # a load is under way
            need = sim.specs[m].mem_bytes
            best: tuple[tuple[int, float], str, list[str]] | None = None
            for node in sorted(sim.slots):
                free = cap - sim.used(node)
                evict: list[str] = []
                if free >= need:
                    cost = (0, -free)
                else:
                    lru = sorted(
                        (sim.last_used.get(x, -math.inf), x)
                        for x, s in sim.slots[node].items()
                        if s.state == "ready"
                    )
                    newest = -math.inf
                    for used_at, x in lru:
                        if free >= need:
                            break
                        evict.append(x)
                        free += sim.specs[x].mem_bytes
                        newest = used_at
                    if free < need:
                        continue
                    cost = (1, newest)
                if best is None or cost < best[0]:
                    best = (cost, node, evict)
            if best is not None:
                for x in best[2]:
                    sim.unload(best[1], x)
                sim.load(best[1], m, t)

    return decide


def oracle(trace: Trace, reserve: float, early_s: float = 2.0) -> Decide:
    """Knows every arrival ahead: not an online policy, a reference for what the fleet's
    memory allows when the forecast is perfect. A model starts loading ``early_s`` before
    the last moment that has it ready for its next request, and a ready model is unloaded
    as soon as its next request is further away than that (keeping it would cost more
    model-seconds than loading it again): so everything it holds is needed within a load
    time and it never evicts. Loads go in the order of their next request, each to the
    replica with the least room that fits it; a load that fits nowhere waits for room.
    Greedy, not a proven optimum: a smarter packing may do better."""
    arrivals = {m: tuple(ats) for m, ats in trace.items()}
    pos = dict.fromkeys(arrivals, 0)

    def next_at(m: str, t: float) -> float:
        ats, i = arrivals.get(m, ()), pos.get(m, 0)
        while i < len(ats) and ats[i] < t:
            i += 1
        pos[m] = i
        return ats[i] if i < len(ats) else math.inf

    def decide(sim: Sim, t: int, counts: Mapping[str, int]) -> None:
        cap = sim.gpu_bytes * (1 - reserve)
        nxt = {m: min([next_at(m, t), *sim.held[m]]) for m in sim.specs}
        lead = {m: spec.load_s + early_s for m, spec in sim.specs.items()}
        for node, slots in sim.slots.items():
            for m, s in list(slots.items()):
                if s.state == "ready" and nxt[m] - t > lead[m]:
                    sim.unload(node, m)
        due = sorted(
            (nxt[m], m) for m in sim.specs if nxt[m] - t <= lead[m] and sim.awake_at(m) == math.inf
        )
        for _, m in due:
            want = sim.specs[m].mem_bytes
            room = [(cap - sim.used(n) - want, n) for n in sorted(sim.slots)]
            fits = [(left, n) for left, n in room if left >= 0]
            if fits:
                sim.load(min(fits)[1], m, t)

    return decide


@dataclass
class Aixds:
    """The real ``forecast`` + ``place`` driving the simulated agents."""

    fc: ForecastConfig
    pc: PlacementConfig
    intent: Intent = field(default_factory=Intent)
    histories: dict[str, DemandHistory] = field(default_factory=dict)
    previous: Placement | None = None
    explain: bool = False
    """Keep ``marks`` (for ``why_waited``)."""
    marks: dict[tuple[str, int], Mark] = field(default_factory=dict)
    _wanted: dict[str, int] = field(default_factory=dict)
    _loading: dict[str, int] = field(default_factory=dict)

    def __call__(self, sim: Sim, t: int, counts: Mapping[str, int]) -> None:
        demand = {}
        fleet = sim.observed(t)
        for m, spec in sim.specs.items():
            h = observe_demand(self.histories.get(m) or new_history(self.fc), t, counts[m], self.fc)
            self.histories[m] = h
            f = forecast(h, t, self.fc, lead_s=spec.load_s)
            held = sim.held[m]
            waited = t - min(held) if held else 0.0
            demand[m] = ModelDemand(f.recent_rate, len(held), waited, forecast=f)
        p = place(fleet, self.intent, demand, self.previous, t, self.pc)
        self.previous = p
        apply_desired(sim, p, t)
        if self.explain:
            self._mark(sim, t, demand)

    def _mark(self, sim: Sim, t: int, demand: Mapping[str, ModelDemand]) -> None:
        """Since when each model is wanted (forecast or held requests) and since when a
        replica loads or wakes it, as the tick's requests will find it."""
        for m, d in demand.items():
            wanted = d.waiting > 0 or (d.forecast is not None and d.forecast.wanted)
            for since, on in ((self._wanted, wanted), (self._loading, sim.awake_at(m) < math.inf)):
                if on:
                    since.setdefault(m, t)
                else:
                    since.pop(m, None)
            self.marks[(m, t)] = Mark(self._wanted.get(m), self._loading.get(m))


@dataclass(frozen=True, slots=True)
class Mark:
    """One model at one tick, after the policy ran."""

    wanted_since: int | None
    """First tick of the run of ticks in which the forecast or a held request wanted it."""
    loading_since: int | None
    """First tick of the run in which a replica had it loading, waking or awake."""


WHY = (
    "unforeseen",
    "foreseen under a load time ahead",
    "foreseen, no memory to load it",
    "foreseen, loaded late for memory",
    "other",
)
"""Why a wait began, most to least the forecast's fault (``why_waited``)."""


def why_waited(
    episodes: Sequence[tuple[str, float]],
    marks: Mapping[tuple[str, int], Mark],
    specs: Mapping[str, ModelSpec],
) -> dict[str, Counter[str]]:
    """Per demand shape, why each wait began (``WHY``): the model was not wanted before the
    request came; wanted, but less than its load time before; wanted long enough, but
    nothing was loading it when the request came, or its load began more than 2 s after
    it was wanted (placement found no GPU memory for it in time)."""
    out: dict[str, Counter[str]] = {}
    for m, at in episodes:
        mark = marks.get((m, int(at)), Mark(None, None))
        w, ld = mark.wanted_since, mark.loading_since
        if w is None or at - w < 1:
            why = WHY[0]
        elif ld is None:
            why = WHY[2]
        elif ld - w > 2:
            why = WHY[3]
        elif at - w < specs[m].load_s:
            why = WHY[1]
        else:
            why = WHY[4]
        out.setdefault(specs[m].kind, Counter())[why] += 1
    return out


def apply_desired(sim: Sim, p: Placement, t: float) -> None:
    """What an agent does with its node's desired entries (no entry: unloaded): unloads and
    sleeps first, so that the loads and wakes wait for the memory they free."""
    for node, slots in sim.slots.items():
        want = p.desired.get(node, {})
        for m, s in list(slots.items()):
            d = want.get(m)
            if d is None or not d.loaded or d.server != server_of(m, sim.layout):
                sim.unload(node, m)
            elif d.sleeping and s.state == "ready":
                sim.sleep(node, m)
        for m, s in list(slots.items()):
            d = want.get(m)
            if d is not None and not d.sleeping and s.state == "sleeping":
                sim.wake(node, m, t)
        for m, d in want.items():
            if d.loaded and d.server == server_of(m, sim.layout) and m not in slots:
                sim.load(node, m, t)


def steadiest(models: Sequence[ModelSpec], trace: Trace) -> str:
    """The model with the most requests."""
    return max(models, key=lambda m: (len(trace[m.name]), m.name)).name


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[max(0, math.ceil(p * len(s)) - 1)]


@dataclass(frozen=True)
class Row:
    policy: str
    requests: int
    waited_pct: float
    p50: float
    p99: float
    wait_mean: float
    wait_p99: float
    resident_s: float
    asleep_s: float
    loads: int
    wakes: int
    overcommit_s: int
    over_hold: int = 0
    """Waits longer than the activator's hold bound (``HOLD_S``): 503s in the real path."""
    on_load_pct: float = 0.0
    """Share of requests that waited on a load (not a wake)."""


def score(st: Stats, base_ttft: float) -> Row:
    waited = [w for w in st.waits if w > 0]
    ttft = [base_ttft + w for w in st.waits]
    n = len(st.waits)
    return Row(
        policy=st.policy,
        requests=n,
        waited_pct=100.0 * len(waited) / n if n else 0.0,
        p50=percentile(ttft, 0.5),
        p99=percentile(ttft, 0.99),
        wait_mean=sum(waited) / len(waited) if waited else 0.0,
        wait_p99=percentile(waited, 0.99),
        resident_s=st.resident_s,
        asleep_s=st.asleep_s,
        loads=st.loads,
        wakes=st.wakes,
        overcommit_s=st.overcommit_s,
        over_hold=sum(w > HOLD_S for w in waited),
        on_load_pct=100.0 * sum(st.on_load) / n if n else 0.0,
    )


HEADER = (
    f"{'policy':<9} {'requests':>8} {'waited':>7} {'on load':>7} {'TTFT p50':>8} {'p99':>7} "
    f"{'wait mean':>9} {'p99':>7} {'>hold':>6} {'model-s':>9} {'asleep-s':>9} {'loads':>6} "
    f"{'wakes':>6}"
)


def row_text(r: Row) -> str:
    return (
        f"{r.policy:<9} {r.requests:>8} {r.waited_pct:>6.1f}% {r.on_load_pct:>6.1f}% "
        f"{r.p50:>7.2f}s {r.p99:>6.2f}s "
        f"{r.wait_mean:>8.2f}s {r.wait_p99:>6.2f}s {r.over_hold:>6} {r.resident_s:>9.0f} "
        f"{r.asleep_s:>9.0f} {r.loads:>6} {r.wakes:>6}"
    )


def by_kind(st: Stats, base_ttft: float) -> str:
    """Waited share and TTFT p99 per demand shape."""
    parts = []
    for kind in KINDS:
        w = [x for x, k in zip(st.waits, st.kinds, strict=True) if k == kind]
        if w:
            waited = 100.0 * sum(x > 0 for x in w) / len(w)
            p99 = base_ttft + percentile(w, 0.99)
            parts.append(f"{kind} {waited:.1f}% p99 {p99:.1f}s")
    return f"  {st.policy:<9} " + ", ".join(parts)


def last_line(rows: Mapping[str, Row]) -> str:
    a, w, r = rows["aixds"], rows["warm"], rows["reactive"]
    return LAST_LINE.format(
        x=a.on_load_pct, y=a.p99 / w.p99, z=a.resident_s / r.resident_s if r.resident_s else 0.0
    )


def fleet_nodes(n: int) -> list[tuple[str, str]]:
    return [(f"gpu-{i}", f"z{i % 2}") for i in range(n)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--smoke", action="store_true", help="3 days of 200 s, 12 models, 3 replicas (seconds)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=6, help="compressed days in all (6)")
    ap.add_argument("--learn-days", type=int, default=2, help="unmeasured days first (2)")
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument(
        "--zipf", type=float, default=ZIPF_S, help="Zipf exponent of popularity (%(default)s)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=TOTAL_RATE,
        help="requests per second over all models, on average (%(default)s)",
    )
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--gpu-gb", type=int, default=80)
    ap.add_argument("--base-ttft", type=float, default=0.3, help="TTFT of a warm model (s)")
    ap.add_argument("--pin", action="store_true", help="aixds pins the steadiest model")
    ap.add_argument(
        "--one-server",
        action="store_true",
        help="one server per node serves every model (it sleeps only as a whole, so a model "
        "asleep keeps its GPU memory) instead of one server per model on the node's GPU",
    )
    ap.add_argument(
        "--host-ratio",
        type=float,
        default=PLACEMENT.host_sleep_ratio,
        help="host memory for sleeping weights, x the GPU's (%(default)s)",
    )
    ap.add_argument(
        "--explain",
        action="store_true",
        help="also print why each of aixds' waits began (forecast, timing or memory)",
    )
    args = ap.parse_args(argv)
    fc, pc = FORECAST, replace(PLACEMENT, host_sleep_ratio=args.host_ratio)
    layout = Layout(per_model=not args.one_server, host_ratio=args.host_ratio)
    models_n, days, learn, replicas = args.models, args.days, args.learn_days, args.replicas
    if args.smoke:
        fc = ForecastConfig(
            bin_s=1.0, n_bins=240, day_s=200.0, n_slots=20, fixed_keep_alive_s=60.0,
            rate_tau_s=10.0,
        )  # fmt: skip
        models_n, days, learn, replicas = 12, 3, 1, 3
    end_s = int(days * fc.day_s)
    measure_from = learn * fc.day_s
    models = make_models(models_n, args.seed, args.zipf, args.rate)
    trace = make_trace(models, end_s, fc.day_s, args.seed)
    nodes = fleet_nodes(replicas)
    gpu = args.gpu_gb * GB
    total = sum(m.mem_bytes for m in models)
    print(
        f"cold-start bench: seed {args.seed}, {len(models)} models ({total / GB:.0f} GB, "
        f"{total / (gpu * len(nodes)):.1f}x the fleet's {len(nodes)} x {args.gpu_gb} GB), "
        f"{days} days of {fc.day_s:.0f} s, measured after day {learn}",
        flush=True,
    )
    print(
        "servers: one per node serving every model (asleep, a model keeps its GPU memory)"
        if args.one_server
        else "servers: one per model on each node's GPU (asleep: weights in host memory, "
        f"{args.host_ratio:g}x the GPU's)",
        flush=True,
    )
    intent = Intent()
    if args.pin:
        pinned = steadiest(models, trace)
        intent = Intent(placement=MappingProxyType({pinned: ModelPlacement(min_resident={"": 1})}))
        print(f"aixds pins {pinned}")
    policies: list[tuple[str, Decide | None]] = [
        ("warm", None),
        ("oracle", oracle(trace, pc.mem_reserve)),
        ("reactive", reactive(fc.fixed_keep_alive_s, pc.mem_reserve)),
        ("aixds", aixds := Aixds(fc, pc, intent, explain=args.explain)),
    ]
    rows: dict[str, Row] = {}
    kinds: list[str] = []
    episodes: list[tuple[str, float]] = []
    print(HEADER, flush=True)
    for name, decide in policies:
        started = time.monotonic()
        st = run(decide, name, models, trace, nodes, gpu, end_s, measure_from, layout)
        if decide is aixds:
            episodes = st.episodes
        rows[name] = score(st, args.base_ttft)
        kinds.append(by_kind(st, args.base_ttft))
        note = f"   ({time.monotonic() - started:.1f} s)"
        if st.censored:
            note += f" {st.censored} still held at the end"
        if st.overcommit_s:
            note += f" OVERCOMMIT {st.overcommit_s} replica-s"
        print(row_text(rows[name]) + note, flush=True)
    print(
        "  (TTFT = base + wait; waited: the model was not awake on arrival; on load: of those,"
        "\n   served by a load, not a wake (the last line's share); wait: of the waited;"
    )
    print(
        f"   >hold: waits over the activator's {HOLD_S:.0f} s bound (a 503 in the real path);"
        "\n   model-s: GPU model-seconds resident (loading, awake, or asleep on a server that"
        "\n   serves other models); asleep-s: host model-seconds asleep; loads, wakes: measured)"
    )
    print("per demand shape (waited share, TTFT p99):")
    print("\n".join(kinds))
    if args.explain:
        why = why_waited(episodes, aixds.marks, {m.name: m for m in models})
        print(
            f"why aixds' {len(episodes)} waits began (each: a request that found its model "
            "not awake, no earlier one held; the rest waited on the same load):"
        )
        for kind in KINDS:
            if kind in why:
                parts = ", ".join(f"{w} {why[kind][w]}" for w in WHY if why[kind][w])
                print(f"  {kind:<9} {parts}")
    print(last_line(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
