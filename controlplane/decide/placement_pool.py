"""The replicas as placement sees them: what each holds, its GPU memory, and the bookkeeping
of one ``place`` run (commits, memory fit, scale-down, the desired entries it yields).

Pure and private to ``placement``: a ``Pool`` is built, changed and read within one call.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
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
class Replica:
    """One replica during one ``place`` run (mutable scratch state)."""

    rid: str
    node: str
    server: str
    region: str
    zone: str
    eligible: bool
    cap: float
    """GPU memory its models may take (``inf``: it reports none, so none is checked)."""
    available: dict[str, AvailableModel]
    fleet_mem: Mapping[str, int]
    held: dict[str, Holding] = field(default_factory=dict)
    committed: set[str] = field(default_factory=set)
    committed_mem: float = 0.0
    unloads: dict[str, str] = field(default_factory=dict)
    """Models to ask unloaded (model -> version)."""

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


Level = tuple[bool, int, int]
"""(pinned, priority, demand): higher wins GPU memory; demand 3 = a request has waited for
it past ``starving_after_s``, 2 = requests wait for it or it serves requests now, 1 = the
forecast expects a request (a representative idle-time histogram's window, a recurring
peak), 0 = only the fixed keep-alive after a request that predicts nothing keeps it."""
Levels = Mapping[str, Level]


class Pool:
    """All replicas of one run, indexed for the choices ``place`` makes."""

    def __init__(
        self, reps: list[Replica], failed: Mapping[str, set[str]], default_load_s: float
    ) -> None:
        self.reps = reps
        self.default_load_s = default_load_s
        self.limit: dict[str, int] = {}
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
        """``model`` fits ``rep`` next to what it has for needs and what it keeps: models held
        within ``hold_s`` of their last change, or whose own need is of ``level`` or higher."""
        used = rep.committed_mem + rep.mem(model)
        for h, holding in rep.held.items():
            if h == model or h in rep.committed:
                continue
            lv = levels.get(h)
            if now - holding.since < hold_s or (lv is not None and lv >= level):
                used += rep.mem(h)
        return used <= rep.cap

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
        rep.committed_mem += rep.mem(model)
        self._node[(rep.node, model)] = rep.rid
        self._count[model] = self._count.get(model, 0) + 1
        key = (model, rep.region, rep.zone)
        self._zone[key] = self._zone.get(key, 0) + 1

    def settle(
        self, levels: Levels, now: float, hold_s: float, idle_s: float, unload_s: float
    ) -> list[tuple[str, str]]:
        """Decide what happens to held models no need took; (model, why) per change."""
        changes: list[tuple[str, str]] = []
        for rep in self.reps:
            if not rep.eligible:
                continue
            used = rep.committed_mem
            spare = [h for h in rep.held if h not in rep.committed]

            # models that may not change yet (within hold_s) take their memory first, so a
            # later-ranked one that can is the one unloaded when memory is short
            def order(h: str, rep: Replica = rep) -> tuple[bool, tuple[int, int, int, int], str]:
                return (now - rep.held[h].since >= hold_s, _rank(levels.get(h)), h)

            for h in sorted(spare, key=order):
                holding, mem = rep.held[h], rep.mem(h)
                idle = now if holding.idle_since is None else holding.idle_since
                if now - holding.since < hold_s:
                    rep.held[h] = replace(holding, idle_since=idle)
                    used += mem
                    self._count[h] = self._count.get(h, 0) + 1
                    continue
                limit = self.limit.get(h, 0)
                if used + mem > rep.cap or (limit and self._count.get(h, 0) >= limit):
                    why = "memory needed" if used + mem > rep.cap else f"max_replicas {limit}"
                    self._drop(rep, h, f"{rep.rid}: {why} → unload", changes)
                    continue
                new = replace(holding, idle_since=idle)
                asleep = now - max(holding.since, idle)  # adopted asleep: from now on
                if holding.state is Hold.SLEEPING and asleep >= unload_s:
                    self._drop(rep, h, f"{rep.rid}: asleep {asleep:.0f} s → unload", changes)
                    continue
                if holding.state is Hold.LOADED and now - idle >= idle_s:
                    if rep.wake_s(h) > 0:
                        new = Holding(Hold.SLEEPING, now, idle, holding.version)
                        changes.append((h, f"{rep.rid}: no need for {now - idle:.0f} s → sleep"))
                    elif now - idle >= idle_s + unload_s:
                        why = f"{rep.rid}: no need for {now - idle:.0f} s (cannot sleep) → unload"
                        self._drop(rep, h, why, changes)
                        continue
                rep.held[h] = new
                used += mem
                self._count[h] = self._count.get(h, 0) + 1
        return changes

    def _drop(self, rep: Replica, model: str, why: str, changes: list[tuple[str, str]]) -> None:
        rep.unloads[model] = rep.held.pop(model).version
        changes.append((model, why))

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
) -> Pool:
    """The pool for one run: what each replica holds (as last asked, else as observed)."""
    names = set(managed)
    fleet_mem: dict[str, int] = {}
    for o in fleet.values():
        for a in o.record.available:
            fleet_mem[a.name] = max(fleet_mem.get(a.name, 0), a.mem_bytes)
    reps: list[Replica] = []
    failed: dict[str, set[str]] = {}
    for rid in sorted(fleet):
        rec = fleet[rid].record
        server = rid.split("/", 1)[1] if "/" in rid else rid
        total = sum(g.mem_total_bytes for g in rec.gpus)
        rep = Replica(
            rid=rid,
            node=rec.node,
            server=server,
            region=rec.region,
            zone=rec.zone,
            eligible=eligible[rid],
            cap=total * (1 - mem_reserve) if total > 0 else math.inf,
            available={a.name: a for a in rec.available},
            fleet_mem=fleet_mem,
        )
        prev = prev_holdings.get(rid)
        node_prev = prev_desired.get(rec.node, {})
        present = {mi.name: mi for mi in rec.models if mi.name in names}
        for m, d in node_prev.items():
            if d.server == server and not d.loaded and m in present:
                rep.unloads[m] = d.version  # asked before, not gone yet
        if not rep.eligible:
            rep.held = dict(prev) if prev is not None else {}
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
