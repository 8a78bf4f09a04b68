"""The automatic-rollback verdict (pure), LRS report parsing and load accumulation."""

from __future__ import annotations

import contextlib

from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from controlplane.decide.rollback import LoadBucket, RollbackPolicy, evaluate, wilson
from controlplane.fleet.load_store import MemoryLoadStore
from controlplane.intent import Rollout
from controlplane.runtime.load_flush import LoadAccumulator
from controlplane.xds.lrs import parse_report

POLICY = RollbackPolicy(window_s=10.0, min_requests=20, margin=0.05, z=3.0)
CANARY = Rollout(stable="v1", canary="v2", canary_percent=10.0, started_at=100.2)


def buckets(*rows: tuple[float, str, int, int]) -> list[LoadBucket]:
    return [LoadBucket(at, f"llama@{v}", ok, err) for at, v, ok, err in rows]


def test_no_verdict_without_a_canary() -> None:
    assert evaluate("llama", Rollout(stable="v1"), [], POLICY, 110.0) is None


def test_waits_for_enough_canary_requests() -> None:
    v = evaluate("llama", CANARY, buckets((101, "v2", 5, 10)), POLICY, 103.0)
    assert v is not None and not v.rollback
    assert v.canary.requests == 15 and "waiting for data" in v.reason


def test_a_canary_failing_30_percent_is_rolled_back() -> None:
    rows = buckets(
        (101, "v1", 300, 0),
        (101, "v2", 21, 9),
        (102, "v1", 300, 1),
        (102, "v2", 20, 10),
    )
    v = evaluate("llama", CANARY, rows, POLICY, 103.0)
    assert v is not None and v.rollback
    assert (v.canary.requests, v.canary.errors) == (60, 19)
    assert (v.stable.requests, v.stable.errors) == (601, 1)
    assert "canary v2 error rate 31.7% (19/60)" in v.reason and "stable v1" in v.reason


def test_counts_before_the_canary_started_or_outside_the_window_are_ignored() -> None:
    rows = buckets(
        (100, "v2", 0, 50),  # the second the canary started in: before started_at
        (90, "v2", 0, 50),  # long before
        (101, "v2", 40, 0),
    )
    v = evaluate("llama", CANARY, rows, POLICY, 102.0)
    assert v is not None and not v.rollback and v.canary.errors == 0
    old = Rollout(stable="v1", canary="v2", started_at=0.0)
    v = evaluate("llama", old, buckets((100, "v2", 0, 50), (120, "v2", 40, 0)), POLICY, 125.0)
    assert v is not None and v.canary.requests == 40  # 100 is outside [115, 125]


def test_noise_does_not_roll_back_but_a_clear_difference_does() -> None:
    # 2 errors in 36 against none in 321: 5.6 points worse, but two errors prove little
    noisy = buckets((101, "v1", 321, 0), (101, "v2", 34, 2))
    v = evaluate("llama", CANARY, noisy, POLICY, 102.0)
    assert v is not None and not v.rollback and "not worse by more than" in v.reason
    # 10 % against 0 % is caught once the counts say so
    few = buckets((101, "v1", 2000, 0), (101, "v2", 90, 10))
    many = buckets((101, "v1", 2000, 0), (101, "v2", 360, 40))
    assert not evaluate("llama", CANARY, few, POLICY, 102.0).rollback  # type: ignore[union-attr]
    assert evaluate("llama", CANARY, many, POLICY, 102.0).rollback  # type: ignore[union-attr]
    # same rates as the stable: never
    same = buckets((101, "v1", 990, 10), (101, "v2", 99, 1))
    v = evaluate("llama", CANARY, same, POLICY, 102.0)
    assert v is not None and not v.rollback
    # the canary alone (100 %): judged against 0
    alone = buckets((101, "v2", 70, 30))
    v = evaluate("llama", CANARY, alone, POLICY, 102.0)
    assert v is not None and v.rollback


def test_wilson_bounds() -> None:
    assert wilson(0, 0, 3.0) == (0.0, 0.0)
    lo, hi = wilson(9, 30, 3.0)
    assert 0.11 < lo < 0.13 and 0.5 < hi < 0.6
    lo, hi = wilson(0, 300, 3.0)
    assert lo == 0.0 and 0.02 < hi < 0.04
    assert wilson(10, 10, 3.0)[1] == 1.0


def _report() -> lrs_pb2.LoadStatsRequest:
    req = lrs_pb2.LoadStatsRequest()
    req.node.id = "edge-1"
    cs = req.cluster_stats.add(cluster_name="llama@v2")
    cs.load_report_interval.FromMilliseconds(500)
    for zone, port, ok, err in (("a", 8001, 7, 3), ("b", 8002, 10, 0)):
        loc = cs.upstream_locality_stats.add(
            total_successful_requests=ok,
            total_error_requests=err,
            total_issued_requests=ok + err,
            total_requests_in_progress=1,
        )
        loc.locality.zone = zone
        ep = loc.upstream_endpoint_stats.add(total_successful_requests=ok, total_error_requests=err)
        ep.address.socket_address.address = "127.0.0.1"
        ep.address.socket_address.port_value = port
    assert isinstance(cs, load_report_pb2.ClusterStats)
    return req


def test_parse_report_sums_localities_and_keeps_endpoints() -> None:
    rep = parse_report("edge-1", _report(), 1000.5)
    (c,) = rep.clusters
    assert (c.cluster, c.success, c.error, c.issued, c.in_progress) == ("llama@v2", 17, 3, 20, 2)
    assert [e.address for e in c.endpoints] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert rep.interval_s == 0.5


async def test_accumulator_buckets_by_second_and_keeps_pending_when_the_store_fails() -> None:
    store = MemoryLoadStore()
    acc = LoadAccumulator(store)
    acc.add(parse_report("edge-1", _report(), 1000.5))
    acc.add(parse_report("edge-2", _report(), 1000.9))
    acc.add(parse_report("edge-1", _report(), 1001.1))

    class Down(MemoryLoadStore):
        async def add(self, deltas: object) -> None:  # type: ignore[override]
            raise ConnectionError("down")

    acc._store = Down()
    with contextlib.suppress(ConnectionError):
        await acc.flush()
    acc._store = store
    await acc.flush()
    assert store.data == {(1000, "llama@v2"): (34, 6), (1001, "llama@v2"): (17, 3)}
    got = await store.read(1000.0, 1001.0)
    assert [(b.at, b.success, b.error) for b in got] == [(1000.0, 34, 6), (1001.0, 17, 3)]
    assert {(r["node_id"], r["cluster"]) for r in acc.view()} == {
        ("edge-1", "llama@v2"),
        ("edge-2", "llama@v2"),
    }
