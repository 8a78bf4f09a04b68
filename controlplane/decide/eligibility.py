"""Which replicas may serve a model version, and in which EDS health state.

- stale (our clock past the record's expiry) -> absent
- model version loading, or GPU faulty -> absent
- model version unloading, replica draining (agent or operator) -> DRAINING
- warming -> HEALTHY with a reduced weight; ready -> HEALTHY
- server stopped answering while its agent runs (the record's ``lost``) -> UNHEALTHY: no
  request, but counted in Envoy's priority health (lost capacity spills to other regions)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from controlplane.fleet.model import ModelState, ObservedReplica, ReplicaRecord
from controlplane.intent import Intent
from controlplane.ir import EndpointIR, Health


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica that belongs in one model version's cluster."""

    record: ReplicaRecord
    health: Health
    warming: bool


def with_peer_speed(cands: Sequence[Candidate]) -> list[Candidate]:
    """``cands`` with each replica whose agent has not measured its speed yet given the
    median speed and capacity of the measured ones (if any): unknown counts as typical,
    neither as the record's default 1.0 (which may be 30x under peers measured on fast
    hardware, and would then send it too little traffic ever to be measured) nor as best."""
    known = [c.record for c in cands if c.record.speed_measured]
    if not known or len(known) == len(cands):
        return list(cands)
    speed = statistics.median(r.speed for r in known)
    capacity = statistics.median(r.capacity for r in known)
    return [
        c
        if c.record.speed_measured
        else replace(c, record=replace(c.record, speed=speed, capacity=capacity))
        for c in cands
    ]


def is_fresh(obs: ObservedReplica, now: float) -> bool:
    return now < obs.expires_at


def gpu_faulty(rec: ReplicaRecord) -> bool:
    return any(g.faulty for g in rec.gpus)


def drained(rec: ReplicaRecord, intent: Intent) -> bool:
    """The operator drained this replica, or its whole node (``Intent.drained``)."""
    return rec.replica_id in intent.drained or rec.node in intent.drained


def candidate(
    obs: ObservedReplica, model: str, version: str, intent: Intent, now: float
) -> Candidate | None:
    rec = obs.record
    if not is_fresh(obs, now) or gpu_faulty(rec):
        return None
    info = rec.model(model, version)
    if info is None and (model, version) in rec.lost and not drained(rec, intent):
        # its server stopped answering while its agent runs: an UNHEALTHY endpoint takes
        # no request but counts in Envoy's priority health, so the lost capacity spills
        # to the next priority (region) instead of piling on the survivors
        return Candidate(record=rec, health=Health.UNHEALTHY, warming=False)
    if info is None or info.state in (ModelState.LOADING, ModelState.SLEEPING):
        return None
    draining = rec.draining or drained(rec, intent) or info.state is ModelState.UNLOADING
    return Candidate(
        record=rec,
        health=Health.DRAINING if draining else Health.HEALTHY,
        warming=info.state is ModelState.WARMING,
    )


def endpoint(c: Candidate, prio: dict[str, int], *, weight: int, health: Health) -> EndpointIR:
    """``c`` as an EDS endpoint; its priority is its region's in ``prio`` (unknown regions
    after all known ones)."""
    rec = c.record
    return EndpointIR(
        replica_id=rec.replica_id,
        address=rec.address,
        port=rec.port,
        weight=weight,
        health=health,
        region=rec.region,
        zone=rec.zone,
        priority=prio.get(rec.region, len(prio)),
    )
