"""Endpoint weights from headroom: queue, running requests, KV-cache use, GPU state, speed.

A replica's raw score estimates how much more work it can take relative to its peers.
Scores are normalised per cluster and quantized onto a geometric ladder, so small noise in
the load does not change the weight (and does not cause a push).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from controlplane.fleet.model import ReplicaRecord

MAX_WEIGHT = 100
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 6, 9, 13, 19, 28, 42, 63, 100)
"""Weight ladder: each step is ~1.5x the previous one."""

WAITING_COST = 2.0
"""A queued request costs more than a running one: it has not even started prefill."""
KV_PRESSURE = 0.6
"""At 100% KV-cache use the score is multiplied by (1 - KV_PRESSURE)."""
THROTTLED_FACTOR = 0.5
"""GPU clock-event (thermal/power) throttling halves the score."""
WARMING_FACTOR = 0.25
"""A warming model version takes a quarter of its normal share."""


def raw_score(rec: ReplicaRecord, *, warming: bool = False) -> float:
    """Higher is better; always > 0 for an eligible replica."""
    load = rec.load
    busy = 1.0 + load.running + WAITING_COST * load.queue_waiting
    score = rec.speed / busy
    score *= 1.0 - KV_PRESSURE * min(1.0, max(0.0, load.kv_cache_usage))
    if any(g.throttled for g in rec.gpus):
        score *= THROTTLED_FACTOR
    if warming:
        score *= WARMING_FACTOR
    return max(score, 1e-9)


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


def weights(scores: Sequence[float]) -> list[int]:
    """Normalise so the best replica gets MAX_WEIGHT, then quantize; every weight >= 1."""
    if not scores:
        return []
    top = max(scores)
    return [quantize(MAX_WEIGHT * s / top) for s in scores]
