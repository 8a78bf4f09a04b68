"""The weight policy: what each input does to a replica's weight, and what keeps pushes rare."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from controlplane.decide.weights import (
    LEVELS,
    MAX_WEIGHT,
    QUEUE_AT,
    QUEUE_FACTOR,
    REFERENCE_WEIGHT,
    SCALE_STEP,
    quantize,
    raw_score,
    weights,
)
from controlplane.fleet.model import GpuStats, LoadStats, ReplicaRecord
from controlplane.ladder import snap
from tests.fleetgen import replica


def rec(
    speed: float = 1.0,
    running: float = 0,
    waiting: float = 0,
    kv: float = 0.0,
    gpus: tuple[GpuStats, ...] = (),
) -> ReplicaRecord:
    return replica("n/a", speed=speed, running=running, waiting=waiting, kv=kv, gpus=gpus).record


def weight_of(*recs: ReplicaRecord) -> list[int]:
    return weights([raw_score(r) for r in recs])


def test_ladder_is_geometric_and_holds_the_reference() -> None:
    assert LEVELS[0] == 1 and LEVELS[-1] == MAX_WEIGHT and REFERENCE_WEIGHT in LEVELS
    assert list(LEVELS) == sorted(set(LEVELS))
    ratios = [b / a for a, b in itertools.pairwise(LEVELS) if a >= 5]
    assert all(1.15 < r < 1.7 for r in ratios), ratios


def test_quantize_snaps_to_the_ladder_within_bounds() -> None:
    assert quantize(0.0) == 1 and quantize(-5) == 1 and quantize(1e12) == MAX_WEIGHT
    assert all(quantize(x) in LEVELS for x in (1.3, 5, 7.7, 50, 99, 1234.5, 99_999))
    # noise inside one rung does not change the weight
    assert quantize(950) == quantize(1000) == quantize(1100) == 1000


def test_an_idle_reference_replica_weighs_the_reference() -> None:
    assert weight_of(rec()) == [REFERENCE_WEIGHT]


def test_one_replicas_load_moves_only_its_own_weight() -> None:
    """No normalisation by the best replica: the others' weights (and EDS bytes) stay."""
    fleet = [rec(speed=s) for s in (1.5, 1.0, 1.0, 0.6)]
    before = weight_of(*fleet)
    for i in range(len(fleet)):
        busy = list(fleet)
        busy[i] = replace(fleet[i], load=LoadStats(running=5, queue_waiting=3, kv_cache_usage=0.9))
        after = weight_of(*busy)
        assert after[i] < before[i]
        assert [w for j, w in enumerate(after) if j != i] == [
            w for j, w in enumerate(before) if j != i
        ]


def test_scale_moves_only_to_stay_in_range() -> None:
    # speeds in odd units: the best still fits under MAX_WEIGHT, the ratios survive
    ws = weights([1e6, 1e5, 1.0])
    assert ws[0] <= MAX_WEIGHT and ws[0] > MAX_WEIGHT / SCALE_STEP / 1.5
    assert ws[0] / ws[1] > 5 and ws[2] == 1
    # a saturated fleet: everything tiny, but the best is not flattened to 1
    ws = weights([1e-7, 1e-8])
    assert ws[0] >= 5 and ws[1] < ws[0]
    # nothing usable: all 1, never 0 (Envoy NACKs 0)
    assert weights([0.0, float("nan"), float("inf")]) == [1, 1, 1]
    assert weights([]) == []


def test_faster_replicas_get_more_than_a_proportional_share() -> None:
    fast, ref, slow = weight_of(rec(speed=1.5), rec(), rec(speed=0.6))
    assert fast > 3 * ref and ref > 3 * slow


def test_a_busy_fast_replica_beats_an_idle_slow_one_until_it_queues() -> None:
    fast_busy, slow_idle = weight_of(rec(speed=1.5, running=4, kv=0.5), rec(speed=0.6))
    assert fast_busy > slow_idle
    fast_queued, slow_idle = weight_of(
        rec(speed=1.5, running=6, waiting=QUEUE_AT, kv=0.9), rec(speed=0.6)
    )
    assert fast_queued < slow_idle


def test_speed_noise_within_a_rung_does_not_change_the_score() -> None:
    assert raw_score(rec(speed=0.97)) == raw_score(rec(speed=1.0)) == raw_score(rec(speed=1.1))
    assert snap(1.0, 1.25) == 1.0 and snap(1.2, 1.25) == 1.25


def test_load_counts_in_coarse_bands() -> None:
    idle, one, three = (raw_score(rec(running=n)) for n in (0, 1, 3))
    assert idle > one == three  # 2 and 4 load units share a band
    assert raw_score(rec(running=3, kv=1.0)) < three  # KV pressure moves it up a band


def test_waiting_requests_mark_a_replica_saturated() -> None:
    base = raw_score(rec(running=6))
    assert raw_score(rec(running=6, waiting=QUEUE_AT)) <= base * QUEUE_FACTOR
    assert raw_score(rec(running=6, waiting=QUEUE_AT - 1)) > base * QUEUE_FACTOR


def test_throttled_gpu_and_warming_lower_the_score() -> None:
    hot = (GpuStats(index=0, throttled=True),)
    assert raw_score(rec(gpus=hot)) < raw_score(rec(gpus=(GpuStats(index=0),)))
    assert raw_score(rec(), warming=True) < raw_score(rec())


def test_score_is_monotonic_in_load_and_speed() -> None:
    rng = random.Random(7)
    for _ in range(500):
        s, r, w, kv = rng.uniform(0.1, 3), rng.randint(0, 20), rng.randint(0, 20), rng.random()
        a = raw_score(rec(speed=s, running=r, waiting=w, kv=kv))
        assert raw_score(rec(speed=s, running=r + 1, waiting=w, kv=kv)) <= a
        assert raw_score(rec(speed=s, running=r, waiting=w + 1, kv=kv)) <= a
        assert raw_score(rec(speed=s, running=r, waiting=w, kv=min(1.0, kv + 0.1))) <= a
        assert raw_score(rec(speed=s * 1.3, running=r, waiting=w, kv=kv)) >= a
        assert a > 0


def test_load_jitter_rarely_changes_weights() -> None:
    """A fleet whose load wanders by +-1 request changes its weights on few of the steps."""
    rng = random.Random(3)
    running = [3.0] * 8
    last, changes, steps = None, 0, 400
    for _ in range(steps):
        i = rng.randrange(8)
        running[i] = min(5.0, max(2.0, running[i] + rng.choice((-1.0, 1.0))))
        ws = weight_of(*(rec(speed=1.0 + 0.1 * j, running=r) for j, r in enumerate(running)))
        changes += ws != last
        last = ws
    assert changes <= 1  # running between 2 and 5 stays in one band
