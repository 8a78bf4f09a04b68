"""Session affinity: the hash cluster a session's turns go to, with weights that hold still.

Every model version with affinity on gets a second cluster (``model@version#affinity``)
next to its load-following one. Requests that carry a session key (the session header,
or the body's ``user``) are routed to it and hashed on the key with MAGLEV, so every turn
of a conversation lands on the replica that holds its prefix cache; requests without a
key keep the load-following LEAST_REQUEST cluster. Why two clusters (see
``docs/affinity.md``): Envoy rebuilds a Maglev table on every EDS weight change and
remaps keys, so a hash cluster must not carry the load-driven weights that move with every
queue change.

- Weights are capacity only: the replica's ``capacity`` (its best recent decode speed,
  held by the agent on a 2x ladder with hysteresis, see ``agent.servers.speed``) snapped
  to powers of ``CAPACITY_STEP``, times ``CAPACITY_WEIGHT``. Load, KV use, queue,
  throttling and warming never change them, nor does the drop of per-sequence speed in a
  big batch; a weight moves only when a GPU stays ~2x slower or faster for many minutes.
- Saturation is Envoy's bounded load (``BALANCE_FACTOR``): a host with more than
  ``BALANCE_FACTOR`` % of its weighted share of the Envoy's active requests is passed over
  for the next host in the key's own fixed order, so overflow of one replica goes to one
  deterministic neighbour per session and returns when the load falls.
- Membership carries the rest: a draining, unloading or drained replica is DRAINING (not
  in the table; its streams in flight finish), a GPU-faulted, stale or removed one is
  absent. Maglev then moves only that replica's keys (about 1/N of the sessions) to the
  other replicas, each to one fixed new home, and they stay there while it is out.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Final

from controlplane.decide.eligibility import Candidate
from controlplane.decide.rollout import ErrorKind, RolloutError
from controlplane.intent import Intent
from controlplane.ir import ClusterIR, EndpointIR, LbPolicy, OutlierIR, affinity_cluster_name
from controlplane.ladder import snap

CAPACITY_STEP: Final = 2.0
"""Capacity rungs for affinity weights (the agent publishes on the same ladder)."""
CAPACITY_WEIGHT: Final = 100
"""Weight of a replica of speed 1.0."""
MAX_MODEL_CHARS: Final = 512
BALANCE_FACTOR: Final = 150
"""Envoy ``hash_balance_factor`` (percent): a host takes at most 1.5x its weighted share of
an Envoy's active requests before that Envoy passes its sessions' turns to the next host."""


def capacity_weight(speed: float) -> int:
    """A replica's affinity weight: its capacity on ``CAPACITY_STEP`` rungs, >= 1."""
    rung = snap(min(1e3, max(1e-3, speed)), CAPACITY_STEP)
    return max(1, round(CAPACITY_WEIGHT * rung))


def affinity_cluster(
    model: str,
    version: str,
    cands: Sequence[Candidate],
    prio: dict[str, int],
    outlier: OutlierIR,
) -> ClusterIR:
    """The session-hash cluster of one model version (same replicas and health as its
    load-following cluster; capacity weights)."""
    endpoints = tuple(
        EndpointIR(
            replica_id=c.record.replica_id,
            address=c.record.address,
            port=c.record.port,
            weight=capacity_weight(c.record.capacity),
            health=c.health,
            region=c.record.region,
            zone=c.record.zone,
            priority=prio.get(c.record.region, len(prio)),
        )
        for c in cands
    )
    return ClusterIR(
        name=affinity_cluster_name(model, version),
        model=model,
        version=version,
        endpoints=endpoints,
        lb_policy=LbPolicy.MAGLEV,
        hash_balance_factor=BALANCE_FACTOR,
        outlier=outlier,
    )


def set_affinity(intent: Intent, model: str, enabled: bool | None) -> Intent:
    """``intent`` with ``model``'s affinity set through the API (``None``: the API's setting
    removed, so fleet.yaml's or the default applies again)."""
    if not model or len(model) > MAX_MODEL_CHARS or model != model.strip():
        raise RolloutError(ErrorKind.INVALID, "bad_model", f"{model!r} is not a model name")
    settings = {m: on for m, on in intent.affinity.items() if m != model}
    if enabled is not None:
        settings[model] = enabled
    return replace(intent, affinity=MappingProxyType(dict(sorted(settings.items()))))
