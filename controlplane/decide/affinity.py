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
  held by the agent on a sqrt(2) ladder with hysteresis, see ``agent.servers.speed``)
  snapped to powers of ``CAPACITY_STEP``, times ``CAPACITY_WEIGHT``. Load, KV use, queue,
  throttling and warming never change them, nor does the drop of per-sequence speed in a
  big batch; a weight moves only when a GPU stays ~1.3x slower or faster for many
  minutes (the peak it holds decays with a 30 min time constant).
- A replica far worse than its peers is shed: when its measured decode speed relative to
  its capacity (so an older GPU generation is not shed for being one), cubed as the
  load-following weights cube it and times the throttling factor, is under the upper
  quartile of the version's replicas divided by ``SHED_RATIO`` (a GPU that became
  ~2.5x slower than it was: thermal, a noisy neighbour, a stuck mode), it is DEGRADED in
  the affinity cluster. Envoy builds the Maglev table from healthy hosts only and sends
  a degraded one nothing while the others can serve, so its sessions move, each to one
  fixed replica, and come back when it recovers: GIE's "sticky until the sticky pod's
  expected TTFT is worse by a bound", with the control plane's fleet-wide view. Load and
  queues do not shed: they move with every burst, and shedding on them (as this did at
  first) flapped: in ``bench.sessions`` at 80 % load, 544 sheds in 90 s, 516 of them on a
  queue of 2, each moving all of a replica's sessions. Saturation is bounded load's job
  (below), per request. The decision also has hysteresis: a replica shed in the previous
  plan (the caller passes that plan's shed set, ``shed_before``) comes back only once it
  is within ``RETURN_RATIO`` of the reference, so one hovering at the bound while its
  peers' scores move does not flap (CI saw shed and back 40 times in 90 s).
- Saturation is also Envoy's bounded load (``BALANCE_FACTOR``): a host with more than
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

import math
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Final

from controlplane.decide.eligibility import Candidate, endpoint
from controlplane.decide.rollout import ErrorKind, RolloutError
from controlplane.decide.weights import SPEED_EXP, speed_rung, throttle_factor
from controlplane.intent import Intent
from controlplane.ir import (
    ClusterIR,
    Health,
    LbPolicy,
    OutlierIR,
    affinity_cluster_name,
)
from controlplane.ladder import snap

CAPACITY_STEP: Final = math.sqrt(2.0)
"""Capacity rungs for affinity weights (the agent publishes on the same ladder): fine
enough that a replica's share of the sessions is within ~19 % of its share of capacity,
which is what moves when it leaves."""
CAPACITY_WEIGHT: Final = 100
"""Weight of a replica of speed 1.0."""
MAX_MODEL_CHARS: Final = 512
SHED_RATIO: Final = 16.0
"""A replica whose relative score is this many times under the version's upper quartile is
DEGRADED in the affinity cluster (its sessions move until it recovers): with speed cubed,
a replica ~2.5x slower than its capacity while its peers run at theirs."""
RETURN_RATIO: Final = 4.0
"""A shed replica comes back once its relative score is within this factor of the upper
quartile (hysteresis: 4x between going and coming back, a speed within ~1.6x)."""
BALANCE_FACTOR: Final = 150
"""Envoy ``hash_balance_factor`` (percent): a host takes at most 1.5x its weighted share of
an Envoy's active requests before that Envoy passes its sessions' turns to the next host."""


def capacity_rung(capacity: float) -> float:
    """A capacity snapped to powers of ``CAPACITY_STEP``."""
    return snap(min(1e3, max(1e-3, capacity)), CAPACITY_STEP)


def capacity_weight(speed: float) -> int:
    """A replica's affinity weight: its capacity on ``CAPACITY_STEP`` rungs, >= 1."""
    return max(1, round(CAPACITY_WEIGHT * capacity_rung(speed)))


def relative_score(c: Candidate) -> float:
    """The replica's measured speed over its capacity, cubed, times the throttling factor:
    an older GPU generation doing as well as it can scores 1 like a new one; a GPU slower
    than its own capacity scores low. Load, queue and warming do not count (see above)."""
    rec = c.record
    ratio = speed_rung(rec) / capacity_rung(rec.capacity)
    return float(ratio**SPEED_EXP) * throttle_factor(rec)


def shed_replicas(
    cands: Sequence[Candidate], shed_before: frozenset[str] = frozenset()
) -> frozenset[str]:
    """HEALTHY replicas whose relative score is under the upper quartile's
    ``1 / SHED_RATIO`` (the quartile, not the median, so that several bad replicas do not
    hide each other), or under its ``1 / RETURN_RATIO`` if they are in ``shed_before``; the
    worst first, fewer than half of them."""
    healthy = sorted(
        (relative_score(c), c.record.replica_id) for c in cands if c.health is Health.HEALTHY
    )
    if len(healthy) < 2:
        return frozenset()
    reference = healthy[(3 * len(healthy)) // 4][0]
    limit = (len(healthy) - 1) // 2
    return frozenset(
        r
        for s, r in healthy[:limit]
        if s * (RETURN_RATIO if r in shed_before else SHED_RATIO) < reference
    )


def affinity_cluster(
    model: str,
    version: str,
    cands: Sequence[Candidate],
    prio: dict[str, int],
    outlier: OutlierIR,
    shed_before: frozenset[str] = frozenset(),
) -> ClusterIR:
    """The session-hash cluster of one model version (same replicas and health as its
    load-following cluster, apart from shed ones; capacity weights). ``shed_before``: the
    replicas this cluster had shed in the previous plan (hysteresis)."""
    shed = shed_replicas(cands, shed_before)
    endpoints = tuple(
        endpoint(
            c,
            prio,
            weight=capacity_weight(c.record.capacity),
            health=Health.DEGRADED if c.record.replica_id in shed else c.health,
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
