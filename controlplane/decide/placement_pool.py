"""The replicas as placement sees them: what each holds, its GPU memory, and the bookkeeping
of one ``place`` run (commits, memory fit, scale-down, the desired entries it yields).

Pure and private to ``placement``: a ``Pool`` is built, changed and read within one call.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from controlplane.fleet.desired import Desired
from controlplane.fleet.model import (
    AvailableModel,
    FleetView,
    ModelInfo,
    ModelState,
    ReplicaRecord,
)


class Hold(enum.StrEnum):
    """What a replica is asked to do with a model it holds."""

    LOADED = "loaded"
    SLEEPING = "sleeping"


@dataclass(frozen=True, slots=True)
class Holding:
    """One model held by one replica, as placement last asked for it."""

    state: Hold
    since: float
    """When it last changed state (``-inf``: before placement knew it)."""
    idle_since: float | None = None
    """Since when no need keeps it; ``None``: a need keeps it."""
    version: str = ""


_PRESENT = {
    ModelState.LOADING: Hold.LOADED,
    ModelState.WARMING: Hold.LOADED,
    ModelState.READY: Hold.LOADED,
    ModelState.SLEEPING: Hold.SLEEPING,
}


@dataclass(slots=True)
class Memory:
    """A memory budget several replicas share: the GPUs they run on (replicas whose GPUs
    have the same uuids share them), or a node's host memory for sleeping weights."""

    cap: float
    """What models may take (``inf``: none reported, so none is checked)."""
    used: float = 0.0
    """Taken by models committed to needs, and by what ineligible members keep."""
    members: list[Replica] = field(default_factory=list)
    """The replicas on these GPUs (GPU budgets only: ``fits`` and ``settle`` walk them)."""
    published: bool = False
    """A host budget the node's agent published (else ``host_sleep_ratio`` x its GPUs)."""


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """One node's memory as a ``place`` run left it (bytes; ``None``: not known)."""

    gpu_used: float
    """GPU memory its models take: loaded, loading, or asleep where that keeps it."""
    gpu_cap: float | None
    """GPU memory models may take (its GPUs less the reserve)."""
    host_used: float
    """Host memory the weights of its servers asleep on their own take."""
    host_cap: float | None
    host_published: bool
    """``host_cap`` is what the node's agent published (``--host-memory``), not the ratio."""


@dataclass(slots=True)
class Replica:
    """One replica during one ``place`` run (mutable scratch state)."""

    rid: str
    node: str
    server: str
    region: str
    zone: str
    eligible: bool
    gpu: Memory
    """The GPU memory its models take, shared with the replicas on the same GPUs."""
    host: Memory
    """Its node's host memory for the weights of servers asleep on their own."""
    available: dict[str, AvailableModel]
    fleet_mem: Mapping[str, int]
    held: dict[str, Holding] = field(default_factory=dict)
    committed: set[str] = field(default_factory=set)
    unloads: dict[str, str] = field(default_factory=dict)
    """Models to ask unloaded (model -> version)."""
    present: dict[str, ModelState] = field(default_factory=dict)
    """What the server reports of the models it has (whatever it was asked)."""

    def mem(self, model: str) -> float:
        a = self.available.get(model)
        if a is not None and a.mem_bytes > 0:
            return float(a.mem_bytes)
        return float(self.fleet_mem.get(model, 0))

    def load_s(self, model: str, default: float) -> float:
        a = self.available.get(model)
        return a.load_s if a is not None and a.load_s > 0 else default

    def wake_s(self, model: str) -> float:
        a = self.available.get(model)
        return a.wake_s if a is not None else 0.0

    def ready_in(self, model: str, now: float, default_load_s: float) -> float:
        """Seconds until the held ``model`` serves here: 0 awake (ready or warming), a wake
        asleep or waking (the agent reports a waking server as sleeping), else what is left
        of the load under way."""
        held = self.held[model]
        state = self.present.get(model)
        if held.state is Hold.SLEEPING:
            return self.wake_s(model)
        if state in (ModelState.READY, ModelState.WARMING):
            return 0.0
        took = now - held.since
        if state is ModelState.SLEEPING:
            return max(0.0, self.wake_s(model) - took)
        return max(0.0, self.load_s(model, default_load_s) - took)

    def fixed(self, model: str, now: float, hold_s: float, default_load_s: float) -> bool:
        """``model`` may not go down here yet: within ``hold_s`` of its last change, or a
        load under way (a server's load call runs to its end: unloading it frees nothing
        sooner, and the agent holds back the other servers of its GPU meanwhile), up to
        twice its load time (a load that hangs is let go)."""
        held = self.held[model]
        took = now - held.since
        if took < hold_s:
            return True
        return (
            held.state is Hold.LOADED
            and self.present.get(model) is ModelState.LOADING
            and took < 2 * self.load_s(model, default_load_s)
        )

    def sleeps_apart(self, model: str) -> bool:
        """Asleep, ``model`` frees its GPU memory: its server sleeps (a wake time) and
        serves no other model (sleep is per server: vLLM's level 1 moves the weights to
        host memory and drops the KV cache; a server that also serves an awake model stays
        awake, its sleeping models' weights on the GPU)."""
        return self.wake_s(model) > 0 and self.available.keys() | self.held.keys() <= {model}

    def gpu_cost(self, model: str, holding: Holding) -> float:
        """GPU memory ``model`` takes here: none once asleep on its own (asked to sleep while
        still loading or awake, it takes its memory until the server says it sleeps)."""
        if (
            holding.state is Hold.SLEEPING
            and self.sleeps_apart(model)
            and self.present.get(model, ModelState.SLEEPING) is ModelState.SLEEPING
        ):
            return 0.0
        return self.mem(model)

    def host_cost(self, model: str, holding: Holding) -> float:
        if holding.state is Hold.SLEEPING and self.sleeps_apart(model):
            return self.mem(model)
        return 0.0


Level = tuple[bool, int, int]
"""(pinned, priority, demand): higher wins GPU memory; demand 3 = a request has waited for
it past ``starving_after_s``, 2 = requests wait for it or it serves requests now, 1 = the
forecast expects a request (a representative idle-time histogram's window, a recurring
peak), 0 = only the fixed keep-alive after a request that predicts nothing keeps it."""
Levels = Mapping[str, Level]
_Asleep = tuple[Replica, str, bool]
"""A model asleep on its own server: (replica, model, may not change yet)."""


class Pool:
    """All replicas of one run, indexed for the choices ``place`` makes."""

    def __init__(
        self, reps: list[Replica], failed: Mapping[str, set[str]], default_load_s: float
    ) -> None:
        self.reps = reps
        self.default_load_s = default_load_s
        self.limit: dict[str, int] = {}
        self.due: dict[str, float] = {}
        """Per model, seconds until the forecast expects its next request (absent: unknown)."""
        self._count: dict[str, int] = {}
        self._zone: dict[tuple[str, str, str], int] = {}
        self._node: dict[tuple[str, str], str] = {}
        self._holders: dict[tuple[str, str | None], list[Replica]] = {}
        self._able: dict[str, list[tuple[float, str, Replica]]] = {}
        self._loaders: dict[tuple[str, str | None], list[list[Replica]]] = {}
        for rep in reps:
            for m in rep.held:
                self._node.setdefault((rep.node, m), rep.rid)
            if not rep.eligible:
                continue
            no = failed.get(rep.rid, set())
            for m in rep.held:
                if m not in no:
                    self._holders.setdefault((m, None), []).append(rep)
                    self._holders.setdefault((m, rep.region), []).append(rep)
            for m, a in rep.available.items():
                if m not in no and m not in rep.held:
                    load = a.load_s if a.load_s > 0 else default_load_s
                    self._able.setdefault(m, []).append((load, rep.rid, rep))

    def holders_of(self, model: str, region: str | None) -> list[Replica]:
        """Eligible replicas that held ``model`` when the run began (in ``region``)."""
        return self._holders.get((model, region), [])

    def loaders(self, model: str, region: str | None) -> list[list[Replica]]:
        """Eligible replicas that can load ``model`` (in ``region``): one list per zone,
        fastest load first, ties by replica id."""
        key = (model, region)
        if key not in self._loaders:  # built on first use: most runs ask for few models
            able = self._able.get(model, [])
            able.sort()  # once per model (replica ids are unique: no Replica is compared)
            zones: dict[tuple[str, str], list[Replica]] = {}
            for _, _, rep in able:
                if region is None or rep.region == region:
                    zones.setdefault((rep.region, rep.zone), []).append(rep)
            self._loaders[key] = [zones[z] for z in sorted(zones)]
        return self._loaders[key]

    def candidates(self, model: str, region: str | None) -> list[Replica]:
        """Every eligible replica that can hold ``model`` (in ``region``)."""
        return self.holders_of(model, region) + [
            r for zone in self.loaders(model, region) for r in zone
        ]

    def reload_s(self, model: str) -> float:
        """The fastest load of ``model`` an eligible replica that lists it reports
        (``default_load_s`` where none does)."""
        d = self.default_load_s
        reps = self.candidates(model, None)
        return min((r.load_s(model, d) for r in reps if model in r.available), default=d)

    def free_for(self, rep: Replica, model: str) -> bool:
        """``rep`` does not hold ``model`` for a need yet, and no other replica of its node
        holds it."""
        return model not in rep.committed and self._node.get((rep.node, model), rep.rid) == rep.rid

    def in_zone(self, model: str, rep: Replica) -> int:
        return self._zone.get((model, rep.region, rep.zone), 0)

    def fits(
        self, rep: Replica, model: str, level: Level, levels: Levels, now: float,
        hold_s: float,
    ) -> bool:  # fmt: skip
        """``model`` fits ``rep``'s GPUs next to what they have for needs and what their
        replicas keep awake: models held within ``hold_s`` of their last change, or whose
        own need is of ``level`` or higher (the others go to sleep or are unloaded)."""
        used = rep.gpu.used + rep.mem(model)
        for other in rep.gpu.members:
            if not other.eligible:
                continue  # counted in ``used``
            for h, holding in other.held.items():
                if (other is rep and h == model) or h in other.committed:
                    continue
                lv = levels.get(h)
                if other.fixed(h, now, hold_s, self.default_load_s) or (
                    lv is not None and lv >= level
                ):
                    used += other.gpu_cost(h, holding)
        return used <= rep.gpu.cap

    def commit(self, rep: Replica, model: str, version: str, now: float) -> None:
        """``rep`` holds ``model`` loaded and awake for a need."""
        held = rep.held.get(model)
        if held is None:
            rep.held[model] = Holding(Hold.LOADED, since=now, version=version)
        elif held.state is Hold.SLEEPING:
            rep.held[model] = Holding(Hold.LOADED, since=now, version=held.version or version)
        else:
            rep.held[model] = replace(held, idle_since=None)
        rep.unloads.pop(model, None)
        rep.committed.add(model)
        rep.gpu.used += rep.mem(model)
        self._node[(rep.node, model)] = rep.rid
        self._count[model] = self._count.get(model, 0) + 1
        key = (model, rep.region, rep.zone)
        self._zone[key] = self._zone.get(key, 0) + 1

    def settle(
        self, levels: Levels, now: float, hold_s: float, idle_s: float, unload_s: float
    ) -> list[tuple[str, str]]:
        """Decide what happens to held models no need took; (model, why) per change.

        Per GPU, the spare models keep their memory in order (those within ``hold_s`` of
        their last change first, then ``_order``: the level of their need, when the
        forecast expects them, how recently they were needed): one that no longer fits goes
        to sleep where that frees its GPU memory, else it is unloaded. Then per node, the
        servers asleep on their own keep host memory: those within ``hold_s`` first, then
        one copy of each model before extra copies, then ``_order``; one that does not fit
        is unloaded."""
        changes: list[tuple[str, str]] = []
        apart: dict[int, list[_Asleep]] = {}
        timing = (now, hold_s, idle_s, unload_s)
        for gpu in self._budgets(lambda r: r.gpu):
            for rep, h, fixed in self._settle_gpu(gpu, levels, timing, changes):
                apart.setdefault(id(rep.host), []).append((rep, h, fixed))
        copies = self._spare_copies(apart)
        for host in self._budgets(lambda r: r.host):
            self._settle_host(host, apart.get(id(host), []), copies, levels, now, changes)
        return changes

    def _settle_gpu(
        self,
        gpu: Memory,
        levels: Levels,
        timing: tuple[float, float, float, float],
        changes: list[tuple[str, str]],
    ) -> list[_Asleep]:
        """One GPU's spare models (see ``settle``); those left asleep on their own, each
        with whether it may not change yet, for the host pass."""
        now, hold_s, idle_s, unload_s = timing
        apart: list[_Asleep] = []
        used = gpu.used
        spare = [(r, h) for r in gpu.members if r.eligible for h in r.held if h not in r.committed]
        spare.sort(
            key=lambda x: (
                not x[0].fixed(x[1], now, hold_s, self.default_load_s),  # may not change yet: first
                *self._order(x[0], x[1], levels, now),
            )
        )
        for rep, h in spare:
            holding = rep.held[h]
            idle = now if holding.idle_since is None else holding.idle_since
            if rep.fixed(h, now, hold_s, self.default_load_s):
                rep.held[h] = replace(holding, idle_since=idle)
                used += rep.gpu_cost(h, holding)
                self._count[h] = self._count.get(h, 0) + 1
                if rep.host_cost(h, holding):
                    apart.append((rep, h, True))
                continue
            limit = self.limit.get(h, 0)
            if limit and self._count.get(h, 0) >= limit:
                self._drop(rep, h, f"{rep.rid}: max_replicas {limit} → unload", changes)
                continue
            new = replace(holding, idle_since=idle)
            asleep = now - max(holding.since, idle)  # adopted asleep: from now on
            cost = rep.gpu_cost(h, holding)
            if cost and used + cost > gpu.cap:
                if (
                    holding.state is Hold.LOADED
                    and rep.sleeps_apart(h)
                    and rep.present.get(h) is ModelState.READY
                ):  # only a ready server sleeps; a load that hangs is unloaded
                    rep.held[h] = Holding(Hold.SLEEPING, now, idle, holding.version)
                    changes.append((h, f"{rep.rid}: GPU memory needed → sleep"))
                    self._count[h] = self._count.get(h, 0) + 1
                    apart.append((rep, h, False))
                else:
                    self._drop(rep, h, f"{rep.rid}: memory needed → unload", changes)
                continue
            if holding.state is Hold.SLEEPING and not cost:
                pass  # asleep on its own: only host memory unloads it
            elif holding.state is Hold.SLEEPING and asleep >= unload_s:
                self._drop(rep, h, f"{rep.rid}: asleep {asleep:.0f} s → unload", changes)
                continue
            elif holding.state is Hold.LOADED and now - idle >= idle_s:
                if rep.wake_s(h) > 0:
                    new = Holding(Hold.SLEEPING, now, idle, holding.version)
                    changes.append((h, f"{rep.rid}: no need for {now - idle:.0f} s → sleep"))
                elif now - idle >= idle_s + unload_s:
                    why = f"{rep.rid}: no need for {now - idle:.0f} s (cannot sleep) → unload"
                    self._drop(rep, h, why, changes)
                    continue
            rep.held[h] = new
            used += rep.gpu_cost(h, new)
            self._count[h] = self._count.get(h, 0) + 1
            if rep.host_cost(h, new):
                apart.append((rep, h, False))
        gpu.used = used
        return apart

    def _settle_host(
        self,
        host: Memory,
        entries: list[_Asleep],
        copies: set[tuple[str, str]],
        levels: Levels,
        now: float,
        changes: list[tuple[str, str]],
    ) -> None:
        """One node's servers asleep on their own (see ``settle``)."""
        used = host.used
        entries = sorted(
            entries,
            key=lambda x: (
                not x[2],
                (x[0].rid, x[1]) in copies,
                *self._order(x[0], x[1], levels, now),
            ),
        )
        for rep, h, fixed in entries:
            mem = rep.host_cost(h, rep.held[h])
            if not fixed and used + mem > host.cap:
                self._drop(rep, h, f"{rep.rid}: host memory needed → unload", changes)
                self._count[h] -= 1
                continue
            used += mem
        host.used = used

    def _spare_copies(self, apart: Mapping[int, list[_Asleep]]) -> set[tuple[str, str]]:
        """(replica id, model) asleep on its own where the model is also awake elsewhere,
        or asleep on an earlier replica: host memory keeps one copy of each model first."""
        awake = {m for r in self.reps for m, h in r.held.items() if h.state is Hold.LOADED}
        first: dict[str, str] = {}
        for entries in apart.values():
            for rep, m, _ in entries:
                if m not in awake and (m not in first or rep.rid < first[m]):
                    first[m] = rep.rid
        return {
            (rep.rid, m)
            for entries in apart.values()
            for rep, m, _ in entries
            if first.get(m) != rep.rid
        }

    def _budgets(self, which: Callable[[Replica], Memory]) -> list[Memory]:
        """The distinct budgets of the replicas, in replica order."""
        seen: dict[int, Memory] = {}
        for rep in self.reps:
            seen.setdefault(id(which(rep)), which(rep))
        return list(seen.values())

    def _order(
        self, rep: Replica, h: str, levels: Levels, now: float
    ) -> tuple[tuple[int, int, int, int], float, float, str, str]:
        """Which spare model keeps memory first (after those that may not change yet): the
        higher-level need, then the sooner the forecast expects its next request, then the
        most recently needed, then by id."""
        holding = rep.held[h]
        idle = now if holding.idle_since is None else holding.idle_since
        return (_rank(levels.get(h)), self.due.get(h, math.inf), -idle, rep.rid, h)

    def _drop(self, rep: Replica, model: str, why: str, changes: list[tuple[str, str]]) -> None:
        rep.unloads[model] = rep.held.pop(model).version
        changes.append((model, why))

    def memory(self) -> Mapping[str, NodeMemory]:
        """Per node, its GPU and host memory once ``settle`` ran (GPU budgets of one node
        added up)."""
        gpus: dict[str, dict[int, Memory]] = {}
        hosts: dict[str, Memory] = {}
        for rep in self.reps:
            gpus.setdefault(rep.node, {})[id(rep.gpu)] = rep.gpu
            hosts[rep.node] = rep.host
        out = {}
        for node in sorted(hosts):
            budgets = gpus[node].values()
            cap = sum(b.cap for b in budgets)
            host = hosts[node]
            out[node] = NodeMemory(
                gpu_used=sum(b.used for b in budgets),
                gpu_cap=cap if math.isfinite(cap) else None,
                host_used=host.used,
                host_cap=host.cap if math.isfinite(host.cap) else None,
                host_published=host.published,
            )
        return MappingProxyType(out)

    def holders(self, model: str, state: Hold) -> tuple[str, ...]:
        return tuple(
            r.rid for r in self.reps if (h := r.held.get(model)) is not None and h.state is state
        )

    def holdings(self) -> Mapping[str, Mapping[str, Holding]]:
        return MappingProxyType(
            {r.rid: MappingProxyType(dict(sorted(r.held.items()))) for r in self.reps if r.held}
        )

    def desired(self) -> Mapping[str, Mapping[str, Desired]]:
        """Per node, per model: one entry (a held model before an unload)."""
        nodes: dict[str, dict[str, Desired]] = {}
        for rep in self.reps:
            entries = nodes.setdefault(rep.node, {})
            for m, h in rep.held.items():
                if m not in entries or not entries[m].loaded:
                    entries[m] = Desired(
                        model=m,
                        server=rep.server,
                        sleeping=h.state is Hold.SLEEPING,
                        version=h.version,
                    )
            for m, version in rep.unloads.items():
                entries.setdefault(m, Desired(m, server=rep.server, loaded=False, version=version))
        return MappingProxyType(
            {n: MappingProxyType(dict(sorted(e.items()))) for n, e in sorted(nodes.items()) if e}
        )


def _rank(level: Level | None) -> tuple[int, int, int, int]:
    """Sort key: models with a higher-level need first, those without any need last."""
    if level is None:
        return (1, 0, 0, 0)
    return (0, 0 if level[0] else 1, -level[1], -level[2])


def build_pool(
    fleet: FleetView,
    eligible: Mapping[str, bool],
    managed: Iterable[str],
    prev_holdings: Mapping[str, Mapping[str, Holding]],
    prev_desired: Mapping[str, Mapping[str, Desired]],
    mem_reserve: float,
    max_failures: int,
    default_load_s: float,
    host_sleep_ratio: float,
) -> Pool:
    """The pool for one run: what each replica holds (as last asked, else as observed)."""
    names = set(managed)
    fleet_mem: dict[str, int] = {}
    for o in fleet.values():
        for a in o.record.available:
            fleet_mem[a.name] = max(fleet_mem.get(a.name, 0), a.mem_bytes)
    gpus, hosts = _memories(fleet, mem_reserve, host_sleep_ratio)
    reps: list[Replica] = []
    failed: dict[str, set[str]] = {}
    for rid in sorted(fleet):
        rec = fleet[rid].record
        server = rid.split("/", 1)[1] if "/" in rid else rid
        rep = Replica(
            rid=rid,
            node=rec.node,
            server=server,
            region=rec.region,
            zone=rec.zone,
            eligible=eligible[rid],
            gpu=gpus[rid],
            host=hosts[rec.node],
            available={a.name: a for a in rec.available},
            fleet_mem=fleet_mem,
        )
        rep.gpu.members.append(rep)
        prev = prev_holdings.get(rid)
        node_prev = prev_desired.get(rec.node, {})
        present = {mi.name: mi for mi in rec.models if mi.name in names}
        rep.present = {m: mi.state for m, mi in present.items()}
        for m, d in node_prev.items():
            if d.server == server and not d.loaded and m in present:
                rep.unloads[m] = d.version  # asked before, not gone yet
        if not rep.eligible:
            rep.held = dict(prev) if prev is not None else {}
            for m, h in rep.held.items():  # kept as they are: their memory is taken
                rep.gpu.used += rep.gpu_cost(m, h)
                rep.host.used += rep.host_cost(m, h)
            reps.append(rep)
            continue
        failed[rid] = _failed(rec, max_failures) & names
        seen = set(prev or ()) | set(node_prev) | set(present)
        for m in sorted(seen & names):
            holding = _holding(m, server, prev, node_prev, present)
            if holding is None:
                continue
            if m in failed[rid] and present.get(m) is None:
                rep.unloads[m] = holding.version  # stop the agent's retries
                continue
            rep.held[m] = holding
        reps.append(rep)
    return Pool(reps, failed, default_load_s)


def _memories(
    fleet: FleetView, mem_reserve: float, host_sleep_ratio: float
) -> tuple[dict[str, Memory], dict[str, Memory]]:
    """Per replica id its GPU budget, per node its host budget for sleeping weights.

    Replicas of one node whose GPUs share a uuid share one budget: the sum of those GPUs'
    memory, less the reserve. A replica whose GPUs have no uuid has its own. A node's host
    budget is what its agent publishes (``ReplicaRecord.host_mem_bytes``, the largest of its
    records), else ``host_sleep_ratio`` times its GPUs' memory."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(k: tuple[str, str]) -> tuple[str, str]:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    total: dict[tuple[str, str], int] = {}
    first: dict[str, tuple[str, str]] = {}
    for rid, o in fleet.items():
        rec = o.record
        keys = [(rec.node, g.uuid) if g.uuid else (rid, str(g.index)) for g in rec.gpus]
        keys = keys or [(rid, "")]
        first[rid] = keys[0]
        for k, g in zip(keys, rec.gpus or (None,), strict=True):
            parent.setdefault(k, k)
            total[k] = max(total.get(k, 0), g.mem_total_bytes if g is not None else 0)
        for k in keys[1:]:
            parent[root(k)] = root(keys[0])
    group_bytes: dict[tuple[str, str], int] = {}
    node_bytes: dict[str, int] = {}
    for k, b in total.items():
        group_bytes[root(k)] = group_bytes.get(root(k), 0) + b
    gpus: dict[tuple[str, str], Memory] = {}
    by_rid: dict[str, Memory] = {}
    published: dict[str, int] = {}
    for rid, o in fleet.items():
        rec = o.record
        k = root(first[rid])
        if k not in gpus:
            b = group_bytes[k]
            gpus[k] = Memory(b * (1 - mem_reserve) if b > 0 else math.inf)
            node_bytes[rec.node] = node_bytes.get(rec.node, 0) + b
        by_rid[rid] = gpus[k]
        published[rec.node] = max(published.get(rec.node, 0), rec.host_mem_bytes)
    hosts = {
        node: _host_budget(published[node], node_bytes[node], host_sleep_ratio)
        for node in published
    }
    return by_rid, hosts


def _host_budget(published: int, gpu_bytes: int, ratio: float) -> Memory:
    """A node's host memory for sleeping weights: what its agent published, else ``ratio``
    times its GPUs' memory (unbounded when neither is known)."""
    if published:
        return Memory(float(published), published=True)
    return Memory(ratio * gpu_bytes if gpu_bytes else math.inf)


def _holding(
    m: str,
    server: str,
    prev: Mapping[str, Holding] | None,
    node_prev: Mapping[str, Desired],
    present: Mapping[str, ModelInfo],
) -> Holding | None:
    if prev is not None and m in prev:
        return prev[m]
    d = node_prev.get(m)
    if d is not None:  # decided before for this node: held only if this server was asked
        if d.server != server or not d.loaded:
            return None
        return Holding(Hold.SLEEPING if d.sleeping else Hold.LOADED, -math.inf, None, d.version)
    info = present.get(m)
    if info is None:
        return None
    state = _PRESENT.get(info.state)
    if state is None:
        return None
    return Holding(state, -math.inf, None, info.version)


def _failed(rec: ReplicaRecord, max_failures: int) -> set[str]:
    return {
        f.name
        for f in rec.failures
        if f.op == "load" and (f.permanent or f.failures >= max_failures)
    }
