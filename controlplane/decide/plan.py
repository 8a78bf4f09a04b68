"""``decide()``: observed fleet + intent + Envoy node + clock -> Plan. Pure.

One cluster per (model, version) seen in any fresh record (so a loading version's cluster
exists, empty, before any route points at it); endpoints are the replicas eligible for it;
routes send each model's traffic to its versions as intent (or the default rule) says.
"""

from __future__ import annotations

from collections import defaultdict

from controlplane.decide.eligibility import Candidate, candidate, is_fresh
from controlplane.decide.node import EnvoyNode
from controlplane.decide.priorities import region_priorities
from controlplane.decide.routes import model_route
from controlplane.decide.weights import raw_score, weights
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import (
    ClusterIR,
    EndpointIR,
    Health,
    ListenerIR,
    ModelRouteIR,
    Plan,
    RouteConfigIR,
    cluster_name,
)

ROUTE_CONFIG_NAME = "aixds-routes"
LISTENER_NAME = "aixds-listener"


def decide(fleet: FleetView, intent: Intent, node: EnvoyNode, now: float) -> Plan:
    fresh = [obs for _, obs in sorted(fleet.items()) if is_fresh(obs, now)]
    versions: dict[str, set[str]] = defaultdict(set)
    for obs in fresh:
        for m in obs.record.models:
            versions[m.name].add(m.version)
    prio = region_priorities(node.region, {o.record.region for o in fresh}, intent.region_distance)

    clusters: list[ClusterIR] = []
    routes: list[ModelRouteIR] = []
    for model in sorted(versions):
        serving: dict[str, int] = {}
        for version in sorted(versions[model]):
            cands = [c for o in fresh if (c := candidate(o, model, version, intent, now))]
            clusters.append(_cluster(model, version, cands, prio))
            n = sum(1 for c in cands if c.health is Health.HEALTHY)
            if n:
                serving[version] = n
        route = model_route(model, serving, intent)
        if route is not None:
            routes.append(route)

    return Plan(
        clusters=tuple(clusters),
        route_configs=(RouteConfigIR(name=ROUTE_CONFIG_NAME, models=tuple(routes)),),
        listeners=(
            ListenerIR(
                name=LISTENER_NAME,
                address=node.listen_address,
                port=node.listen_port,
                route_config=ROUTE_CONFIG_NAME,
            ),
        ),
    )


def _cluster(model: str, version: str, cands: list[Candidate], prio: dict[str, int]) -> ClusterIR:
    healthy = [c for c in cands if c.health is Health.HEALTHY]
    ws = weights([raw_score(c.record, warming=c.warming) for c in healthy])
    weight_of = {c.record.replica_id: w for c, w in zip(healthy, ws, strict=True)}
    endpoints = tuple(
        EndpointIR(
            replica_id=c.record.replica_id,
            address=c.record.address,
            port=c.record.port,
            weight=weight_of.get(c.record.replica_id, 1),
            health=c.health,
            region=c.record.region,
            zone=c.record.zone,
            priority=prio.get(c.record.region, len(prio)),
        )
        for c in cands
    )
    return ClusterIR(
        name=cluster_name(model, version), model=model, version=version, endpoints=endpoints
    )
