"""bench.chaos's pure parts: the seeded schedule, failure causes, RSS growth and version
regressions."""

from __future__ import annotations

import itertools
from collections import Counter

from bench.chaos import (
    KINDS,
    OTHER,
    OWN_REPLICA,
    Kill,
    cause,
    regressions,
    rss_growth_mb,
    schedule,
)
from bench.routing_load import Outcome


def test_schedule_is_seeded_sequential_and_covers_every_kind() -> None:
    a = schedule(1, 600.0, 4)
    assert a == schedule(1, 600.0, 4) and a != schedule(2, 600.0, 4)
    assert Counter(f.kind for f in a).keys() == set(KINDS)
    counts = Counter(f.kind for f in a)
    assert max(counts.values()) - min(counts.values()) <= 1  # each kind in turn
    for prev, nxt in itertools.pairwise(a):
        assert nxt.at >= prev.at + prev.down_s + 6.0  # one fault at a time
    for f in a:
        assert 2.0 <= f.down_s <= 6.0 and f.at + f.down_s <= 600.0
        assert 0 <= f.index < {"control-plane": 2, "redis": 1}.get(f.kind, 4)
    assert 30 <= len(a) <= 60  # every 8-20 s over 10 minutes


def test_only_a_stream_cut_by_its_own_servers_death_is_excused() -> None:
    kills = [Kill("gpu-1/vllm-8001", 10.0)]
    cut = Outcome(at=9.8, target=0, prompt=8, output=30, status=200, e2e=0.25,
                  replica="gpu-1/vllm-8001", error="stream cut")  # fmt: skip
    assert cause(cut, kills) == OWN_REPLICA
    other_replica = Outcome(at=9.8, target=0, prompt=8, output=30, status=200, e2e=0.25,
                            replica="gpu-2/vllm-8002", error="stream cut")  # fmt: skip
    assert cause(other_replica, kills) == OTHER
    later = Outcome(at=10.5, target=0, prompt=8, output=30, status=503, e2e=0.01,
                    error="http 503")  # fmt: skip
    assert cause(later, kills) == OTHER
    before = Outcome(at=9.0, target=0, prompt=8, output=30, status=200, e2e=0.5,
                     replica="gpu-1/vllm-8001", error="stream cut")  # fmt: skip
    assert cause(before, kills) == OTHER  # ended before the kill: not its fault


def test_rss_growth_counts_from_the_warm_point() -> None:
    mb = 1_000_000
    samples = [(0.0, 10 * mb), (30.0, 80 * mb), (60.0, 100 * mb), (300.0, 103 * mb)]
    assert rss_growth_mb(samples) == 3.0
    assert rss_growth_mb(samples[:3]) == 0.0  # one warm sample: nothing to compare


def test_a_version_coming_back_is_a_regression() -> None:
    assert regressions([{"cds/x": "a"}, {"cds/x": "a"}, {"cds/x": "b"}]) == 0
    assert regressions([{"cds/x": "a"}, {"cds/x": "b"}, {"cds/x": "a"}]) == 1
    assert regressions([{"cds/x": "a", "rds/r": "1"}, {"cds/x": "b", "rds/r": "1"}]) == 0
