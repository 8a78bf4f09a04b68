"""Endpoint weights: how much of a model version's traffic each replica should take.

Envoy runs LEAST_REQUEST on top of these weights: at every pick it divides a host's weight
by its own in-flight requests + 1, so it still balances per request between two pushes. The
weights therefore carry what one Envoy cannot see by itself, and change only when that
changes meaningfully:

    score = speed' ** SPEED_EXP / load' ** LOAD_EXP  * throttle * queue * warming

- ``speed'``: the replica's decode speed (``ReplicaRecord.speed``, relative to a reference
  GPU; the agent measures it) snapped to powers of ``SPEED_STEP``. Cubed: per-token
  latency is inversely proportional to speed and grows only slowly with batch size, so a
  request is better off in a fast replica's batch than alone on a slow GPU. Proportional
  shares (exponent 1) still put the longest requests on the slowest GPUs, and those set
  the p99.
- ``load'``: ``(1 + running + WAITING_COST * waiting) / (1 - KV_PRESSURE * kv_cache)``,
  snapped to powers of ``LOAD_STEP`` (idle / busy / very busy): the fleet-wide load, of
  which each edge Envoy sees only its own part. Square-rooted: a busy batch slows each
  token only a little, so an idle slow GPU must not outbid a busy fast one. Fine-grained
  balancing is LEAST_REQUEST's job.
- ``queue``: ``QUEUE_FACTOR`` once ``QUEUE_AT`` requests wait: the replica is saturated
  (batch or KV cache full) and a new request would queue too.
- ``throttle``: ``THROTTLED_FACTOR`` while NVML reports thermal or power clock events.
  (Faulty GPUs are not here: ``eligibility`` removes them.)
- ``warming``: ``WARMING_FACTOR`` while the model version warms up.

Quantization keeps pushes bounded: a weight changes only when one of the replica's own
snapped inputs moves to another rung, and ``weights`` uses one fixed scale
(``REFERENCE_WEIGHT`` for an idle replica of speed 1) instead of normalising by the best
replica, which would move (and push) every weight whenever the best replica's load moved.
``quantize`` finally snaps to ``LEVELS`` (~1.5x apart, 1 to ``MAX_WEIGHT``).

Pure: no I/O, no clock, no state. Smoothing beyond snapping belongs to the inputs: the
agent publishes a load change only past a threshold, and smooths its speed estimate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from controlplane.fleet.model import ReplicaRecord
from controlplane.ladder import snap

MAX_WEIGHT = 100_000
"""The ladder runs from 1 to here (Envoy allows up to 2**32 - 1 per locality in total)."""
REFERENCE_WEIGHT = 1000
"""Weight of an idle replica of speed 1.0."""
# fmt: off
LEVELS: tuple[int, ...] = (
    1, 2, 3, 5, 8, 12, 17, 26, 39, 59, 88, 132, 198, 296, 444, 667, 1000, 1500, 2250, 3375,
    5062, 7594, 11391, 17086, 25629, 38443, 57665, 86498, 100000,
)
# fmt: on
"""The weight ladder: round(REFERENCE_WEIGHT * 1.5 ** k), from 1 to MAX_WEIGHT."""
MIN_TOP_WEIGHT = 10.0
"""The best replica's weight is kept at least this, so the others keep rungs below it."""
SCALE_STEP = 10.0
"""Only if the best weight would exceed MAX_WEIGHT or fall below MIN_TOP_WEIGHT (speeds in
unexpected units; a fleet where every replica is saturated) the common scale moves by
powers of this until it fits."""

SPEED_EXP = 3.0
"""Exponent on speed: 1 shares in proportion to speed; 3 strongly favours fast replicas."""
SPEED_STEP = 1.25
"""Speed is snapped to powers of this before use."""
LOAD_EXP = 0.5
"""Exponent on load units: idle counts twice a busy replica, four times a very busy one."""
LOAD_STEP = 4.0
"""Load units are snapped to powers of this before use: 1 (idle), 4, 16, 64..."""
WAITING_COST = 2.0
"""A queued request costs more than a running one: it has not even started prefill."""
KV_PRESSURE = 0.6
"""At 100% KV-cache use the load counts 1 / (1 - KV_PRESSURE) times as much."""
QUEUE_AT = 2.0
"""Waiting requests from which a replica counts as saturated."""
QUEUE_FACTOR = 0.1
"""A saturated replica's share: a new request would queue there too."""
THROTTLED_FACTOR = 0.6
"""GPU clock-event (thermal/power) throttling: clocks are cut by roughly this much."""
WARMING_FACTOR = 0.25
"""A warming model version takes a quarter of its normal share."""


def load_units(rec: ReplicaRecord) -> float:
    """Requests a new one would share the replica with (itself included), KV-weighted, >= 1."""
    load = rec.load
    busy = 1.0 + max(0.0, load.running) + WAITING_COST * max(0.0, load.queue_waiting)
    return busy / (1.0 - KV_PRESSURE * min(1.0, max(0.0, load.kv_cache_usage)))


def speed_rung(rec: ReplicaRecord) -> float:
    """The replica's measured speed snapped to powers of ``SPEED_STEP``."""
    return snap(min(1e3, max(1e-3, rec.speed)), SPEED_STEP)


def throttle_factor(rec: ReplicaRecord) -> float:
    """``THROTTLED_FACTOR`` while any of its GPUs is throttled, else 1."""
    return THROTTLED_FACTOR if any(g.throttled for g in rec.gpus) else 1.0


def raw_score(rec: ReplicaRecord, *, warming: bool = False) -> float:
    """Higher is better; always > 0 for an eligible replica."""
    score: float = speed_rung(rec) ** SPEED_EXP / snap(load_units(rec), LOAD_STEP) ** LOAD_EXP
    if rec.load.queue_waiting >= QUEUE_AT:
        score *= QUEUE_FACTOR
    score *= throttle_factor(rec)
    if warming:
        score *= WARMING_FACTOR
    return max(score, 1e-12)


def quantize(value: float) -> int:
    """Snap a weight in [1, MAX_WEIGHT] onto the nearest ladder level (log scale)."""
    v = min(float(MAX_WEIGHT), max(1.0, value))
    i = bisect.bisect_left(LEVELS, v)
    if i == 0:
        return LEVELS[0]
    if i >= len(LEVELS):
        return LEVELS[-1]
    lo, hi = LEVELS[i - 1], LEVELS[i]
    return lo if v * v < lo * hi else hi


def scale_for(top: float) -> float:
    """``REFERENCE_WEIGHT``, unless the best score ``top`` would then weigh more than
    ``MAX_WEIGHT`` or less than ``MIN_TOP_WEIGHT``: then moved by the fewest powers of
    ``SCALE_STEP`` that bring it in."""
    w = top * REFERENCE_WEIGHT
    if w > MAX_WEIGHT:
        n = math.ceil(math.log(w / MAX_WEIGHT, SCALE_STEP))
        return float(REFERENCE_WEIGHT / SCALE_STEP**n)
    if w < MIN_TOP_WEIGHT:
        n = math.ceil(math.log(MIN_TOP_WEIGHT / w, SCALE_STEP))
        return float(REFERENCE_WEIGHT * SCALE_STEP**n)
    return float(REFERENCE_WEIGHT)


def weights(scores: Sequence[float]) -> list[int]:
    """Scores -> EDS weights on the ladder, one common scale; every weight >= 1."""
    good = [s for s in scores if s > 0 and math.isfinite(s)]
    if not good:
        return [1] * len(scores)
    k = scale_for(max(good))
    return [quantize(k * s) if s > 0 and math.isfinite(s) else 1 for s in scores]
