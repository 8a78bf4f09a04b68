"""Cold models: loadable somewhere, served nowhere. Their requests go to the activator.

A model is *cold* for ``decide()`` when no version of it has a replica that can take
traffic, and yet it can be had: a fresh, healthy, undrained replica lists it as
``available`` (or has it loading, warming or asleep), or an operator placed it
(``Intent.placement``). Its route then points at the activator cluster: the control
planes' activators (``controlplane.activator``) hold each request, ask for a load (or a
wake), and send the request back through the Envoy it came from once a replica is ready.
A model with a serving replica never passes through Python.

Without activators in the settings (``Intent.activators`` empty) nothing changes: a cold
model is unknown to Envoy and answers 404.
"""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.decide.eligibility import drained, gpu_faulty
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import (
    ACTIVATOR_CLUSTER,
    ClusterIR,
    EndpointIR,
    Health,
    LbPolicy,
    ModelRouteIR,
    OutlierIR,
    WeightedClusterIR,
)

SLOW_START_S = 10.0
"""Envoy slow start for the load-following clusters of on-demand models: a replica that
just loaded (or woke) is ramped in over this window on top of its warming weight."""

COMING = (ModelState.LOADING, ModelState.WARMING, ModelState.SLEEPING)
"""States of a model that will serve soon (or after a wake) without a new load."""


def loadable_models(fresh: Iterable[ObservedReplica], intent: Intent) -> set[str]:
    """Models some usable replica can load, is loading or holds asleep, and placed ones."""
    out = set(intent.placement)
    for obs in fresh:
        rec = obs.record
        if gpu_faulty(rec) or rec.draining or drained(rec, intent):
            continue
        out.update(a.name for a in rec.available)
        out.update(m.name for m in rec.models if m.state in COMING)
    return out


def on_demand_models(fresh: Iterable[ObservedReplica], intent: Intent) -> set[str]:
    """Models placement loads and unloads: listed as available anywhere, or placed. (Stable
    across a load, unlike ``loadable_models``, so their clusters' config does not flip.)"""
    out = set(intent.placement)
    for obs in fresh:
        out.update(a.name for a in obs.record.available)
    return out


def activator_cluster(intent: Intent) -> ClusterIR:
    """The activators as one cluster: round robin, retried on connect failure only.

    An activator that fails is ejected like any host; the held requests it had are lost
    with it (the client sees a reset), the next ones go to another."""
    endpoints = tuple(
        EndpointIR(
            replica_id=f"activator/{addr}:{port}",
            address=addr,
            port=port,
            weight=1,
            health=Health.HEALTHY,
            region="",
            zone="",
            priority=0,
        )
        for addr, port in sorted(intent.activators)
    )
    return ClusterIR(
        name=ACTIVATOR_CLUSTER,
        model="",
        version="",
        endpoints=endpoints,
        lb_policy=LbPolicy.ROUND_ROBIN,
        # a held request that times out answers 503: not a reason to eject; a connect
        # failure is
        outlier=OutlierIR(
            consecutive_5xx=1_000_000,
            consecutive_gateway_failure=1_000_000,
            max_ejection_percent=50,
        ),
    )


def cold_route(model: str) -> ModelRouteIR:
    return ModelRouteIR(
        model=model,
        clusters=(WeightedClusterIR(ACTIVATOR_CLUSTER, 1),),
        activator=True,
    )
