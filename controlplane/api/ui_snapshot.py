"""What the web dashboard (``/ui``) shows, as one compact JSON-ready dict: ``snapshot``.

A pure function of what the server already holds in memory (fleet view, intent, the
reconciler's plans per Envoy group, ADS status, region states, LRS reports, the last
placement decision); the clock is an argument. ``ui_feed`` calls it about once a second
and sends the result to browsers over server-sent events.

Layout: regions -> zones -> nodes -> replicas (GPU state, models, queue, KV use, speed,
per Envoy group the EDS weight / health / priority, and the measured share of the
model's requests), Envoy groups (connected streams, NACKs), models (versions, routes,
rollout, placement) and drains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.api.rollouts import model_view, traffic
from controlplane.decide.eligibility import is_fresh
from controlplane.decide.rollback import Verdict
from controlplane.decide.rollout import version_counts
from controlplane.fleet.model import FleetView, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import Plan

SHARE_WINDOW_S = 10.0
"""An LRS report older than this (its Envoy went away) does not count towards a share."""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One Envoy node group as the reconciler last decided it."""

    role: str
    region: str
    zone: str
    plan: Plan
    published_at: float


@dataclass(frozen=True, slots=True)
class UiInputs:
    """Everything ``snapshot`` reads; built by the API from its context."""

    now: float
    view: FleetView
    intent: Intent
    groups: Mapping[str, GroupPlan] = field(default_factory=dict)
    xds: Mapping[str, Any] = field(default_factory=dict)
    """``AdsServer.status()``: ``streams`` and ``nacks`` per group."""
    regions: Mapping[str, str] = field(default_factory=dict)
    """Region -> ``live`` / ``demoted`` / ``lost`` (empty: one region, no registries)."""
    local_region: str = ""
    """This control plane's own region (listed first); empty: not known."""
    loads: Sequence[Mapping[str, Any]] = ()
    """``LoadAccumulator.view()``: the latest LRS report per Envoy and cluster."""
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    placement: Mapping[str, Any] | None = None
    """The last placement decision document (``GET /v1/placement``'s ``decision``)."""
    redis_connected: bool = True
    synced: bool = True
    """The fleet view and the intent have been read from Redis once (before that the
    snapshot is empty, and the first full one is no news)."""
    writes_enabled: bool = False


def snapshot(i: UiInputs) -> dict[str, Any]:
    """The dashboard's whole state at ``i.now``."""
    shares = _shares(i)
    return {
        "at": round(i.now, 3),
        "revision": i.intent.revision,
        "redis_connected": i.redis_connected,
        "synced": i.synced,
        "writes_enabled": i.writes_enabled,
        "local_region": i.local_region,
        "regions": _regions(i, shares),
        "groups": _groups(i),
        "models": _models(i),
        "drains": sorted(i.intent.drained),
        "nacks": _nacks(i.xds),
    }


# -- fleet tree -----------------------------------------------------------------------------


def _regions(i: UiInputs, shares: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    eds = _eds_by_replica(i.groups)
    tree: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {r: {} for r in i.regions}
    for rid, obs in sorted(i.view.items()):
        rec = obs.record
        row = _replica(i, rid, obs, eds.get(rid, {}), shares.get(rid, {}))
        tree.setdefault(rec.region, {}).setdefault(rec.zone, {}).setdefault(rec.node, []).append(
            row
        )
    drained = i.intent.drained
    return [
        {
            "name": region,
            "state": i.regions.get(region, "live"),
            "zones": [
                {
                    "name": zone,
                    "nodes": [
                        {"name": node, "drained": node in drained, "replicas": reps}
                        for node, reps in sorted(nodes.items())
                    ],
                }
                for zone, nodes in sorted(zones.items())
            ],
        }
        for region, zones in sorted(tree.items(), key=lambda kv: (kv[0] != i.local_region, kv[0]))
    ]


def _replica(
    i: UiInputs,
    rid: str,
    obs: ObservedReplica,
    eds: dict[str, list[dict[str, Any]]],
    share: dict[str, float],
) -> dict[str, Any]:
    rec = obs.record
    return {
        "id": rid,
        "address": f"{rec.address}:{rec.port}",
        "kind": rec.server_kind.value,
        "fresh": is_fresh(obs, i.now),
        "expires_in_s": round(obs.expires_at - i.now, 1),
        "draining": rec.draining or rid in i.intent.drained,
        "sleeping": rec.sleeping,
        "models": [
            {"name": m.name, "version": m.version, "state": m.state.value} for m in rec.models
        ],
        "failures": [f"{f.op} {f.name}@{f.version}: {f.error}" for f in rec.failures],
        "lost": [f"{name}@{version}" for name, version in rec.lost],
        "queue_waiting": rec.load.queue_waiting,
        "running": rec.load.running,
        "kv_cache": round(rec.load.kv_cache_usage, 4),
        "prefix_hit": None
        if rec.load.prefix_cache_hit_rate is None
        else round(rec.load.prefix_cache_hit_rate, 4),
        "speed": round(rec.speed, 3),
        "gpus": [
            {
                "index": g.index,
                "util": round(g.util_gpu, 3),
                "mem_used": g.mem_used_bytes,
                "mem_total": g.mem_total_bytes,
                "temp_c": g.temperature_c,
                "throttled": g.throttled,
                "faulty": g.faulty,
                "fault": g.fault_reason,
            }
            for g in rec.gpus
        ],
        "eds": eds,
        "share": share,
    }


def _eds_by_replica(groups: Mapping[str, GroupPlan]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """replica id -> group -> its endpoints there (cluster, weight, health, priority)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, g in sorted(groups.items()):
        for c in g.plan.clusters:
            for e in c.endpoints:
                out.setdefault(e.replica_id, {}).setdefault(name, []).append(
                    {
                        "cluster": c.name,
                        "weight": e.weight,
                        "health": e.health.value,
                        "priority": e.priority,
                    }
                )
    return out


def _shares(i: UiInputs) -> dict[str, dict[str, float]]:
    """replica id -> model -> percent of the model's requests the Envoys sent it, from
    each Envoy's latest LRS report per cluster (one report interval, about a second),
    unless older than ``SHARE_WINDOW_S``."""
    model_of = {c.name: c.model for g in i.groups.values() for c in g.plan.clusters}
    by_addr = {f"{o.record.address}:{o.record.port}": rid for rid, o in i.view.items()}
    issued: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    for rep in i.loads:
        if i.now - float(rep.get("at", 0.0)) > SHARE_WINDOW_S:
            continue
        model = model_of.get(str(rep.get("cluster", "")))
        if model is None:
            continue
        for ep in rep.get("endpoints", ()):
            n = int(ep.get("issued", 0))
            rid = by_addr.get(str(ep.get("address", "")))
            if rid is None or n <= 0:
                continue
            issued[(rid, model)] = issued.get((rid, model), 0) + n
            totals[model] = totals.get(model, 0) + n
    out: dict[str, dict[str, float]] = {}
    for (rid, model), n in sorted(issued.items()):
        out.setdefault(rid, {})[model] = round(100.0 * n / totals[model], 1)
    return out


# -- Envoy groups, models, NACKs ------------------------------------------------------------


def _groups(i: UiInputs) -> list[dict[str, Any]]:
    streams: list[Mapping[str, Any]] = list(i.xds.get("streams", ()))
    nacks: Mapping[str, Sequence[Any]] = i.xds.get("nacks", {})
    names = sorted(set(i.groups) | {str(s.get("group")) for s in streams})
    out = []
    for name in names:
        g = i.groups.get(name)
        envoys = sorted(str(s.get("node_id")) for s in streams if s.get("group") == name)
        out.append(
            {
                "name": name,
                "role": g.role if g else "",
                "region": g.region if g else "",
                "zone": g.zone if g else "",
                "published_at": g.published_at if g else None,
                "envoys": envoys,
                "nacks": len(nacks.get(name, ())),
                "routes": {}
                if g is None
                else {
                    m.model: {w.cluster: w.weight / 100 for w in m.clusters}
                    for rc in g.plan.route_configs
                    for m in rc.models
                },
            }
        )
    return out


def _models(i: UiInputs) -> list[dict[str, Any]]:
    counts = version_counts(i.view, i.intent, i.now)
    split = _split(i)
    decided: Mapping[str, Any] = (i.placement or {}).get("models", {}) or {}
    out = []
    for model in sorted(set(counts) | set(i.intent.rollouts)):
        mv = model_view(
            model, i.intent, counts, i.view, split.get(model, {}), i.verdicts.get(model), i.now
        )
        pin = i.intent.placement.get(model)
        d = decided.get(model)
        mv["placement"] = {
            "pinned": None
            if pin is None
            else {
                "min_resident": dict(pin.min_resident),
                "max_replicas": pin.max_replicas,
                "priority": pin.priority,
                "fallback": pin.fallback,
            },
            "awake": list(d.get("awake", ())) if d else [],
            "sleeping": list(d.get("sleeping", ())) if d else [],
            "reasons": list(d.get("reasons", ())) if d else [],
        }
        out.append(mv)
    return out


def _split(i: UiInputs) -> dict[str, dict[str, float]]:
    """model -> version -> percent of new requests: read from a group's routes (every group
    gets the same split); without a group, decided here (the costly part on a big fleet)."""
    if not i.groups:
        return traffic(i.view, i.intent, i.now)
    plan = i.groups[min(i.groups)].plan
    version_of = {c.name: c.version for c in plan.clusters}
    return {
        m.model: {version_of.get(w.cluster, w.cluster): w.weight / 100 for w in m.clusters}
        for rc in plan.route_configs
        for m in rc.models
    }


def _nacks(xds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every NACK record, oldest first, with its group."""
    recs = [{"group": g, **dict(n)} for g, ns in sorted(xds.get("nacks", {}).items()) for n in ns]
    return sorted(recs, key=lambda n: float(n.get("at", 0.0)))
