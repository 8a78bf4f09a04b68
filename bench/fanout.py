"""ADS fan-out: one EDS change to K Envoys, time to the last ACK, and server memory.

The ADS server runs in this process; K simulated Envoys run in a separate process, each a
grpc.aio stream on its own connection that subscribes to CDS and to the EDS of 50
clusters x 20 endpoints and ACKs every response. Each round changes one cluster's
weights and measures from ``set_snapshot`` to the last stream's ACK of the new version.

    python -m bench.fanout                      # K = 100 and 1,000, 20 rounds each
    python -m bench.fanout --clients 1000 --rounds 50
    python -m bench.fanout --quick              # 5 rounds
    python -m bench.fanout --profile prof.out   # cProfile of the server during the rounds
    python -m bench.fanout --tls pki            # mutual TLS, with the certificates that the
                                                # README's openssl commands make in pki/
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import logging
import multiprocessing as mp
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from controlplane.xds.ads import (
    ADS_METHOD,
    ADS_SERVICE,
    start_xds_server,
    stop_xds_server,
    tune_gc,
)
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.credentials import server_credentials
from controlplane.xds.resources import CLUSTER, ENDPOINT
from controlplane.xds.snapshot import Snapshot

CLUSTERS = 50
ENDPOINTS = 20
GROUP = "edge/bench"
TARGET_MS = 300.0
TARGET_RSS_MB = 250.0


# -- the fleet -------------------------------------------------------------------------------


def cluster_names() -> list[str]:
    return [f"model-{i:02d}" for i in range(CLUSTERS)]


def build_snapshot(round_no: int) -> Snapshot:
    """50 EDS clusters x 20 endpoints; round ``r`` changes the weights of one cluster."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import config_source_pb2

    clusters, clas = [], []
    changed = round_no % CLUSTERS
    for i, name in enumerate(cluster_names()):
        c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        c.connect_timeout.seconds = 1
        c.eds_cluster_config.eds_config.ads.SetInParent()
        c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
        clusters.append(c)
        a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        loc = a.endpoints.add()
        loc.locality.region = "bench"
        for j in range(ENDPOINTS):
            lb = loc.lb_endpoints.add()
            sa = lb.endpoint.address.socket_address
            sa.address = f"10.{i}.{j}.1"
            sa.port_value = 8000
            bump = round_no if i == changed else 0
            lb.load_balancing_weight.value = 1 + (j * 7 + bump) % 100
        clas.append(a)
    return Snapshot.from_resources({CLUSTER: clusters, ENDPOINT: clas})


# -- simulated Envoys (the client process) ---------------------------------------------------


def _client_process(port: int, k: int, conn: Connection, tls: str | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    # EOFError: the pipe closed because the benchmark died without saying "stop"
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        asyncio.run(_clients(port, k, conn, tls))


def _ld(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (lengths here are < 16 KiB)."""
    n = len(data)
    size = bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
    return bytes((number << 3 | 2,)) + size + data


def _channel(port: int, tls: str | None) -> Any:
    """One connection to the server: plaintext, or mutual TLS with the README's ``pki/``."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
    if tls is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    d = Path(tls)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.crt").read_bytes(),
        private_key=(d / "envoy-edge-us-1.key").read_bytes(),
        certificate_chain=(d / "envoy-edge-us-1.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)


async def _clients(port: int, k: int, conn: Connection, tls: str | None = None) -> None:
    gc.set_threshold(20_000, 50, 50)  # the simulated Envoys should leave the CPU to the server
    path = f"/{ADS_SERVICE}/{ADS_METHOD}"
    names = cluster_names()
    # DiscoveryRequest bytes by hand: version_info=1, node=2, resource_names=3, type_url=4,
    # response_nonce=5. Only the version and the nonce change from one ACK to the next.
    cds_tail = _ld(4, CLUSTER.encode())
    eds_tail = b"".join(_ld(3, n.encode()) for n in names) + _ld(4, ENDPOINT.encode())
    channels: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    parse = discovery_pb2.DiscoveryResponse.FromString

    async def envoy(i: int, channel: Any) -> None:
        call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)()
        node = discovery_pb2.DiscoveryRequest()
        node.node.id = f"bench-envoy-{i}"
        node.node.locality.region = "bench"
        await call.write(node.SerializeToString() + cds_tail)
        eds_requested = False
        async for raw in call:
            resp = parse(raw)
            tail = eds_tail if resp.type_url == ENDPOINT else cds_tail
            ack = _ld(1, resp.version_info.encode()) + tail + _ld(5, resp.nonce.encode())
            await call.write(ack)
            if not eds_requested:
                eds_requested = True
                await call.write(eds_tail)

    for i in range(k):
        ch = _channel(port, tls)
        channels.append(ch)
        tasks.append(asyncio.create_task(envoy(i, ch), name=f"bench-envoy-{i}"))
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    conn.send("started")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # any message: stop
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()


# -- the server side -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


@dataclass
class Result:
    clients: int
    rounds: list[float]
    """Seconds from set_snapshot to the last ACK, per round."""
    cpu_per_round: float
    """Server CPU seconds per round (all threads)."""
    client_cpu_per_round: float
    rss: float
    peak_rss: float
    connect_s: float

    def pct(self, p: float) -> float:
        xs = sorted(self.rounds)
        return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


class AckCounter:
    """Counts ACKs of one EDS version and remembers when the last one arrived."""

    def __init__(self) -> None:
        self.version = ""
        self.count = 0
        self.last = 0.0
        self.done = asyncio.Event()
        self.want = 0

    def expect(self, version: str, want: int) -> None:
        self.version, self.count, self.want = version, 0, want
        self.done.clear()

    def __call__(self, group: str, node_id: str, type_url: str, version: str) -> None:
        if type_url == ENDPOINT and version == self.version:
            self.count += 1
            if self.count == self.want:
                self.last = time.perf_counter()
                self.done.set()


async def run_one(
    k: int, rounds: int, profile: cProfile.Profile | None, tls: str | None = None
) -> Result:
    port = free_port()
    tune_gc()  # as the runtime does at startup
    cache = SnapshotCache()
    acks = AckCounter()
    creds = None
    if tls is not None:
        d = Path(tls)
        creds = server_credentials(d / "controlplane.crt", d / "controlplane.key", d / "ca.crt")
    server, ads = await start_xds_server(
        cache, "127.0.0.1", port, CollectorRegistry(), on_ack=acks, credentials=creds
    )
    snap = build_snapshot(0)
    acks.expect(snap.version(ENDPOINT) or "", k)
    cache.set_snapshot(GROUP, snap)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_client_process, args=(port, k, child, tls), name="bench-clients")
    t0 = time.perf_counter()
    proc.start()
    try:
        await asyncio.wait_for(acks.done.wait(), timeout=60 + k / 10)
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(0.2)
        times: list[float] = []
        cpu0 = time.process_time()
        assert proc.pid is not None
        client0 = cpu_seconds(proc.pid)
        for r in range(1, rounds + 1):
            snap = build_snapshot(r)
            acks.expect(snap.version(ENDPOINT) or "", k)
            if profile is not None:
                profile.enable()
            start = time.perf_counter()
            cache.set_snapshot(GROUP, snap)
            await asyncio.wait_for(acks.done.wait(), timeout=30)
            if profile is not None:
                profile.disable()
            times.append(acks.last - start)
            await asyncio.sleep(0.05)
        cpu = (time.process_time() - cpu0) / rounds
        client_cpu = (cpu_seconds(proc.pid) - client0) / rounds
        rss, peak = rss_mb()
        return Result(k, times, cpu, client_cpu, rss, peak, connect_s)
    finally:
        parent.send("stop")
        await stop_xds_server(server, 1.0, ads)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def print_table(results: Sequence[Result]) -> None:
    head = (
        f"{'clients':>8} {'rounds':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'server cpu ms':>13} {'client cpu ms':>13} {'RSS MB':>7} {'peak MB':>8} "
        f"{'connect s':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.clients:>8} {len(r.rounds):>6} {r.pct(50):>8.1f} {r.pct(99):>8.1f} "
            f"{max(r.rounds) * 1000:>8.1f} {r.cpu_per_round * 1000:>13.1f} "
            f"{r.client_cpu_per_round * 1000:>13.1f} {r.rss:>7.1f} {r.peak_rss:>8.1f} "
            f"{r.connect_s:>9.1f}"
        )
    print("cpu ms: per round (one EDS change to every client and its ACK), all threads")
    print(
        f"targets at 1,000 clients: p99 <= {TARGET_MS:.0f} ms, RSS <= {TARGET_RSS_MB:.0f} MB; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.clients.split(",") if x]
    load = os.getloadavg()[0]
    rounds = 5 if args.quick else args.rounds
    profile = cProfile.Profile() if args.profile else None
    results = []
    for k in counts:
        results.append(await run_one(k, rounds, profile, args.tls))
        print(
            f"K={k}: p50 {results[-1].pct(50):.1f} ms, p99 {results[-1].pct(99):.1f} ms",
            file=sys.stderr,
        )
    print_table(results)
    print("xDS over mutual TLS" if args.tls else "xDS in plaintext")
    print(f"load average (1 min) before the run: {load:.2f}")
    if profile is not None:
        profile.dump_stats(args.profile)
        print(f"profile written to {args.profile}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--clients", default="100,1000", help="comma-separated K values")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="5 rounds")
    p.add_argument("--profile", metavar="FILE", help="write a cProfile of the rounds to FILE")
    p.add_argument(
        "--tls",
        metavar="PKI_DIR",
        help="mutual TLS with the certificates the README's openssl commands make in PKI_DIR",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
