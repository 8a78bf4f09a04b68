"""``decide()``: observed fleet + intent + Envoy node + clock -> Plan. Pure.

One cluster per (model, version) seen in any fresh record (so a loading version's cluster
exists, empty, before any route points at it); endpoints are the replicas eligible for it;
routes send each model's traffic to its versions as intent (or the default rule) says.

A version in ``intent.draining_versions`` takes no share of its model's traffic; its
endpoints stay HEALTHY while it settles, then turn DRAINING, then its cluster is left out
(see ``rollout.Phase``). Fail open: if no other version of the model can serve, the
draining list is ignored for that model, since an old version beats no version.

A model that can be loaded but has no serving replica (cold, ``decide.cold``) is routed
to the activators, which hold its requests until a replica is ready.

A model whose live regions do not all serve the same versions says so in its routes
(``decide.region_diff``): a session failing over to a region without its version would
change version.

With session affinity on for the model (the default, ``Intent.affinity_on``), each
version also gets a session-hash cluster (``decide.affinity``) that requests carrying a
session key are routed to.

A canary's cluster never ejects all of its hosts (``CANARY_OUTLIER``): its share of the
traffic has no other cluster to go to (healthy_panic_threshold is 0), so ejecting a lone
canary host would turn its errors into 100 % "no healthy upstream" replies that Envoy's
load reports do not count, hiding them from the automatic rollback. The rollback moves
that traffic to the stable version instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Final

from controlplane.decide.affinity import affinity_cluster
from controlplane.decide.cold import (
    SLOW_START_S,
    activator_cluster,
    cold_route,
    loadable_models,
    on_demand_models,
)
from controlplane.decide.eligibility import (
    Candidate,
    candidate,
    endpoint,
    is_fresh,
    with_peer_speed,
)
from controlplane.decide.node import EnvoyNode
from controlplane.decide.priorities import region_priorities
from controlplane.decide.region_diff import regions_differ
from controlplane.decide.rollout import Phase, phase
from controlplane.decide.routes import model_route
from controlplane.decide.weights import raw_score, weights
from controlplane.fleet.model import FleetView
from controlplane.intent import Intent
from controlplane.ir import (
    ClusterIR,
    Health,
    ListenerIR,
    ModelRouteIR,
    OutlierIR,
    Plan,
    RouteConfigIR,
    affinity_cluster_name,
    cluster_name,
)

ROUTE_CONFIG_NAME = "aixds-routes"
LISTENER_NAME = "aixds-listener"
CANARY_OUTLIER: Final = OutlierIR(max_ejection_percent=50, always_eject_one_host=False)
"""At most half of a canary's hosts are ejected, never a lone one."""


def decide(
    fleet: FleetView,
    intent: Intent,
    node: EnvoyNode,
    now: float,
    *,
    shed_before: frozenset[tuple[str, str]] = frozenset(),
) -> Plan:
    """The plan for one Envoy node group. ``shed_before``: (affinity cluster, replica id)
    pairs that were shed in this group's previous plan (``Plan.shed()``), for the
    shedding's hysteresis (``decide.affinity``)."""
    fresh = [obs for _, obs in sorted(fleet.items()) if is_fresh(obs, now)]
    versions: dict[str, set[str]] = defaultdict(set)
    for obs in fresh:
        for m in obs.record.models:
            versions[m.name].add(m.version)
    live_regions = {o.record.region for o in fresh}
    prio = region_priorities(node.region, live_regions, intent.region_distance)

    clusters: list[ClusterIR] = []
    routes: list[ModelRouteIR] = []
    on_demand = on_demand_models(fresh, intent)
    for model in sorted(versions):
        by_version = {
            v: with_peer_speed([c for o in fresh if (c := candidate(o, model, v, intent, now))])
            for v in sorted(versions[model])
        }
        phases = _phases(intent, model, by_version, now)
        rollout = intent.rollouts.get(model)
        affinity = intent.affinity_on(model)
        serving: dict[str, int] = {}
        serving_in: dict[str, set[str]] = defaultdict(set)
        for version, cands in by_version.items():
            ph = phases.get(version)
            if ph is Phase.REMOVED:
                continue
            if ph is Phase.DRAINING:
                cands = [replace(c, health=Health.DRAINING) for c in cands]
            canary = rollout is not None and rollout.canary == version != rollout.stable
            slow = SLOW_START_S if model in on_demand else 0.0
            clusters.append(_cluster(model, version, cands, prio, canary=canary, slow_start_s=slow))
            if affinity:
                outlier = CANARY_OUTLIER if canary else OutlierIR()
                name = affinity_cluster_name(model, version)
                held = frozenset(r for c, r in shed_before if c == name)
                clusters.append(affinity_cluster(model, version, cands, prio, outlier, held))
            healthy = [c for c in cands if c.health is Health.HEALTHY]
            if healthy:
                serving[version] = len(healthy)
            for c in healthy:
                serving_in[c.record.region].add(version)
        route = model_route(model, serving, intent, exclude=frozenset(phases), affinity=affinity)
        if route is not None:
            differ = regions_differ(serving_in, live_regions)
            routes.append(replace(route, regions_differ=differ) if differ else route)
    if intent.activators:
        # The activator cluster stays while no model is cold: removed with the last cold
        # route, Envoy would drop it (CDS first) before the route moved (RDS after), and a
        # request in between would get 503 "no cluster".
        clusters.append(activator_cluster(intent))
        routed = {r.model for r in routes}
        routes.extend(cold_route(m) for m in sorted(loadable_models(fresh, intent) - routed))

    return Plan(
        clusters=tuple(clusters),
        route_configs=(
            RouteConfigIR(
                name=ROUTE_CONFIG_NAME,
                models=tuple(routes),
                version_headers=intent.version_headers,
            ),
        ),
        listeners=(
            ListenerIR(
                name=LISTENER_NAME,
                address=node.listen_address,
                port=node.listen_port,
                route_config=ROUTE_CONFIG_NAME,
            ),
        ),
    )


def _phases(
    intent: Intent, model: str, by_version: dict[str, list[Candidate]], now: float
) -> dict[str, Phase]:
    """Draining versions of ``model`` and their phase; none if nothing else could serve."""
    draining = intent.draining_versions.get(model, {})
    if not draining:
        return {}
    others_serve = any(
        c.health is Health.HEALTHY
        for v, cands in by_version.items()
        if v not in draining
        for c in cands
    )
    return {v: phase(d, now) for v, d in draining.items()} if others_serve else {}


def _cluster(
    model: str,
    version: str,
    cands: list[Candidate],
    prio: dict[str, int],
    *,
    canary: bool = False,
    slow_start_s: float = 0.0,
) -> ClusterIR:
    healthy = [c for c in cands if c.health is Health.HEALTHY]
    ws = weights([raw_score(c.record, warming=c.warming) for c in healthy])
    weight_of = {c.record.replica_id: w for c, w in zip(healthy, ws, strict=True)}
    endpoints = tuple(
        endpoint(c, prio, weight=weight_of.get(c.record.replica_id, 1), health=c.health)
        for c in cands
    )
    return ClusterIR(
        name=cluster_name(model, version),
        model=model,
        version=version,
        endpoints=endpoints,
        outlier=CANARY_OUTLIER if canary else OutlierIR(),
        slow_start_window_s=slow_start_s,
    )
