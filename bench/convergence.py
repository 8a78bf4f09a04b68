"""Convergence: an agent's publish to Redis -> Envoy's admin shows the new weight.

Starts Redis, ``aixds serve`` and one Envoy as processes; publishes replica records
the way an agent does (HSET + PEXPIRE + PUBLISH), flipping one replica's load so that
its EDS weight changes, and polls Envoy's admin ``/clusters`` until the new weight
shows. Prints p50/p90/p99/max over N updates. Target: p99 <= 20 ms.

    python -m bench.convergence            # 200 updates
    python -m bench.convergence --updates 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

from controlplane.decide import EnvoyNode, decide
from controlplane.demo.procs import ProcessGroup, free_port, wait_port
from controlplane.fleet.model import (
    LoadStats,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.intent import Intent
from controlplane.proc_guard import interrupt_on_stop_signals

TARGET_P99_MS = 20.0
CLUSTER = "bench@v1"


def records() -> tuple[ReplicaRecord, ReplicaRecord]:
    base = ReplicaRecord(
        replica_id="node-a/vllm-1",
        node="node-a",
        region="us",
        zone="us-a",
        address="127.0.0.1",
        port=1,
        server_kind=ServerKind.VLLM,
        models=(ModelInfo("bench", "v1", ModelState.READY),),
        timestamp=time.time(),
    )
    return base, replace(base, replica_id="node-b/vllm-2", node="node-b", port=2)


def expected_weight(a: ReplicaRecord, b: ReplicaRecord) -> int:
    """The weight decide() gives ``a`` next to ``b``: what Envoy must end up showing."""
    view = {r.replica_id: ObservedReplica(r, float("inf")) for r in (a, b)}
    plan = decide(view, Intent(), EnvoyNode(region="us"), time.time())
    (cluster,) = plan.clusters
    return next(e.weight for e in cluster.endpoints if e.replica_id == a.replica_id)


def admin_weight(client: httpx.Client, admin: int, port: int) -> int | None:
    text = client.get(f"http://127.0.0.1:{admin}/clusters").text
    needle = f"{CLUSTER}::127.0.0.1:{port}::weight::"
    i = text.find(needle)
    if i < 0:
        return None
    j = text.find("\n", i)
    return int(text[i + len(needle) : j])


async def run(updates: int, log_dir: Path) -> list[float]:
    redis_port, xds, api, listen, admin = (free_port() for _ in range(5))
    group = ProcessGroup(log_dir)
    try:
        group.redis(redis_port)
        url = f"redis://127.0.0.1:{redis_port}/0"
        group.aixds(
            "serve",
            "serve",
            "--redis",
            url,
            "--xds",
            f"127.0.0.1:{xds}",
            "--api",
            f"127.0.0.1:{api}",
        )
        wait_port(api)
        group.aixds(
            "envoy",
            "envoy",
            "--xds",
            f"127.0.0.1:{xds}",
            "--node-id",
            "bench-edge",
            "--region",
            "us",
            "--zone",
            "us-a",
            "--listen",
            f"127.0.0.1:{listen}",
            "--admin",
            f"127.0.0.1:{admin}",
        )
        wait_port(admin)
        reg = RedisRegistry(connect(url))
        a, b = records()
        await reg.publish(b, ttl_s=600)
        await reg.publish(a, ttl_s=600)
        http = httpx.Client(timeout=2.0)
        deadline = time.monotonic() + 20
        first = expected_weight(a, b)
        while admin_weight(http, admin, 1) != first:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Envoy never got the endpoints; logs in {log_dir}")
            await asyncio.sleep(0.05)
        samples: list[float] = []
        for i in range(updates):
            running = 8.0 if i % 2 == 0 else 0.0
            rec = replace(a, load=LoadStats(running=running), timestamp=time.time())
            expect = expected_weight(rec, b)
            t0 = time.perf_counter()
            await reg.publish(rec, ttl_s=600)
            while admin_weight(http, admin, 1) != expect:
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError(f"update {i} not seen in 5 s; logs in {log_dir}")
            samples.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.01)
        await reg.client.aclose()
        return samples
    finally:
        group.stop_all()


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--updates", type=int, default=200)
    args = ap.parse_args(argv)
    interrupt_on_stop_signals()  # SIGTERM, SIGHUP: stop every child, as on Ctrl-C
    with tempfile.TemporaryDirectory(prefix="aixds-bench-") as tmp:
        samples = asyncio.run(run(args.updates, Path(tmp)))
    p99 = pct(samples, 99)
    print(f"convergence: agent publish -> Envoy admin shows new weight ({len(samples)} updates)")
    print(f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    print(
        f"{pct(samples, 50):8.2f} {pct(samples, 90):8.2f} {p99:8.2f} {max(samples):8.2f} "
        f"{statistics.fmean(samples):8.2f}"
    )
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if p99 <= TARGET_P99_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
