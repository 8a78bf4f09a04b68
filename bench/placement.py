"""Placement speed: ``place`` over a large fleet, cold (no previous) and steady (with one).

500 replicas in 3 regions x 4 zones, each able to load all 50 models (10-30 GB on 80 GB);
a third of the models pinned, each with some demand. Prints the median and worst time of
each kind of run.

    python -m bench.placement
    python -m bench.placement --replicas 1000 --models 100 --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from types import MappingProxyType

from controlplane.decide.placement import ModelDemand, Placement, PlacementConfig, place
from controlplane.fleet.model import (
    AvailableModel,
    GpuStats,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.intent import Intent, ModelPlacement

GB = 1 << 30


Workload = tuple[dict[str, ObservedReplica], Intent, dict[str, ModelDemand]]


def build(replicas: int, models: int) -> Workload:
    names = [f"model-{i:03d}" for i in range(models)]
    avail = tuple(
        AvailableModel(n, "v1", mem_bytes=(10 + i % 3 * 10) * GB, load_s=20.0 + i % 7, wake_s=1.0)
        for i, n in enumerate(names)
    )
    fleet = {}
    for r in range(replicas):
        rid = f"gpu-{r:04d}/vllm-8000"
        loaded = (ModelInfo(names[r % models], "v1", ModelState.READY),)
        fleet[rid] = ObservedReplica(
            ReplicaRecord(
                replica_id=rid,
                node=rid.split("/")[0],
                region=f"r{r % 3}",
                zone=f"r{r % 3}-z{r % 4}",
                address="10.0.0.1",
                port=8000,
                server_kind=ServerKind.VLLM,
                models=loaded,
                gpus=(GpuStats(index=0, mem_total_bytes=80 * GB),),
                available=avail,
            ),
            expires_at=1e12,
        )
    intent = Intent(
        placement=MappingProxyType(
            {n: ModelPlacement(min_resident={"": 1}, priority=i % 3) for i, n in enumerate(names)}
        )
    )
    demand = {n: ModelDemand(rate=float(i % 10), waiting=i % 5 == 0) for i, n in enumerate(names)}
    return fleet, intent, demand


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=500)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    fleet, intent, demand = build(args.replicas, args.models)
    cfg = PlacementConfig()
    cold: list[float] = []
    steady: list[float] = []
    p: Placement | None = None
    for i in range(args.rounds):
        t0 = time.perf_counter()
        first = place(fleet, intent, demand, None, 0.0, cfg)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p = place(fleet, intent, demand, p or first, 1.0 + i, cfg)
        steady.append(time.perf_counter() - t0)
    assert p is not None
    awake = sum(len(d.awake) for d in p.decisions.values())
    print(f"{args.replicas} replicas x {args.models} models: {awake} held awake")
    for name, xs in (("cold", cold), ("steady", steady)):
        print(
            f"  {name:6s} median {statistics.median(xs) * 1e3:6.1f} ms  max {max(xs) * 1e3:6.1f} ms"
        )


if __name__ == "__main__":
    main()
