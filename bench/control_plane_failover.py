"""Control-plane loss under load: how long an Envoy is without a control plane after the
one it is connected to is killed with ``kill -9``, and how many requests fail.

    python -m bench.control_plane_failover [--control-planes 3] [--runs 5] [--logs DIR]

One redis-server, ``--control-planes`` ``aixds serve`` on it, two fake vLLM replicas with
their agents, and one edge Envoy started with ``aixds envoy --xds a,b,c`` (every control
plane). A closed-loop load (4 workers) runs through the edge the whole time. Each run
finds the control plane holding the Envoy's ADS stream, kills it with SIGKILL, and times
until another one holds the stream with every type ACKed (polling each control plane's
``GET /v1/xds`` every 10 ms), checks that the versions the Envoy ACKed there are those it
had, then restarts the killed one on its ports and lets things settle. At the end it
compares the requests the load got answered with those the load reports (LRS) put in
Redis: the load-report stream of a killed control plane reconnects only after Envoy's
fixed 5 s. The last line is exactly
``control-plane failover: failed X/Y, reconnect median Z.ZZ s``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis

from controlplane.fleet import schema
from tests.e2e.control_planes import ControlPlanes, acked
from tests.e2e.fleet import Fleet, Load
from tests.support import Procs, RedisServer, wait_until

FAST = ("--ttft-ms", "1", "--tpot-ms", "2", "--max-running", "64")


def reported(url: str) -> int:
    """Successful requests the load reports put in Redis (every second's bucket)."""
    client = redis.Redis.from_url(url)
    try:
        total = 0
        for key in client.scan_iter(match=schema.LOAD_PREFIX + "*"):
            for field, n in client.hgetall(key).items():
                if field.startswith(b"s:"):
                    total += int(n)
        return total
    finally:
        client.close()


def run(n: int, runs: int, logs: Path) -> tuple[list[float], int, int]:
    procs = Procs(logs)
    store = RedisServer(logs)
    store.start()
    try:
        fleet = Fleet(procs, store)
        cps = ControlPlanes(procs, store, n)
        for _ in range(2):
            fleet.add_replica(server_args=FAST)
        edge = fleet.add_edge(xds=cps.xds)
        node_id = f"edge-us-{edge.port}"
        fleet.wait_routable(edge, "llama", 2)
        times: list[float] = []
        with Load(edge.url, "llama", concurrency=4) as load:
            load.wait_requests(100)
            for i in range(runs):
                wait_until(lambda: cps.serving(node_id) is not None, 10, what="a stream")
                got = cps.serving(node_id)
                assert got is not None
                cp, before = got
                cp.proc.kill()
                t0 = time.monotonic()
                wait_until(lambda: cps.serving(node_id) is not None, 30, interval=0.01)
                took = time.monotonic() - t0
                got = cps.serving(node_id)
                assert got is not None
                other, after = got
                same = acked(after) == acked(before)
                times.append(took)
                print(
                    f"run {i + 1}: killed {cp.name}, Envoy on {other.name} after {took:.3f} s,"
                    f" same versions: {same}, failed so far {load.failed}/{load.total}",
                    flush=True,
                )
                cps.restart(cp)
                time.sleep(2.0)
            load.wait_requests(50)
        ok = load.status[200]
        time.sleep(7.0)  # a load-report stream that moved reconnects after 5 s
        print(f"load reports in Redis: {reported(store.url)} requests; answered 200: {ok}")
        return times, load.failed, load.total
    finally:
        procs.stop_all()
        store.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--control-planes", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    args = ap.parse_args(argv)
    if args.control_planes < 2:
        ap.error("--control-planes must be >= 2")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="aixds-cp-failover-"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        times, failed, total = run(args.control_planes, args.runs, logs)
    finally:
        if args.logs is None:
            shutil.rmtree(logs, ignore_errors=True)
    print(f"reconnect s: {' '.join(f'{t:.3f}' for t in times)} (max {max(times):.3f})")
    print(
        f"control-plane failover: failed {failed}/{total},"
        f" reconnect median {statistics.median(times):.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
