"""Bad input to the real xDS server (ADS + LRS on one grpc.aio server) from raw clients.

Each test abuses the server the way a broken or hostile client could (unknown type URLs,
huge nodes, garbage nonces and versions, NACKs for what was never sent, 100k resource
names, bytes that are not a DiscoveryRequest, storms of streams, clients that never read,
Delta xDS, garbage load reports) and then checks that the abuse was answered sensibly or
closed with a proper gRPC status, and that a healthy stream still gets a push afterwards:
the server process keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.load_stats.v3 import lrs_pb2
from prometheus_client import CollectorRegistry

from controlplane.xds.ads import (
    ADS_SERVICE,
    MAX_REQUEST_BYTES,
    start_xds_server,
    stop_xds_server,
)
from controlplane.xds.cache import MAX_NODE_METADATA_BYTES, SnapshotCache
from controlplane.xds.lrs import (
    LRS_METHOD,
    LRS_SERVICE,
    MAX_CLUSTER_LABELS,
    LoadReport,
    LrsMetrics,
    LrsServer,
)
from controlplane.xds.resources import CLUSTER, ENDPOINT
from tests.integration.test_ads_server import (
    BIG,
    GROUP,
    Env,
    eventually,
    keeps_up,
    many,
    snap,
)
from tests.support import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNKNOWN = "type.googleapis.com/envoy.config.nothing.v3.Nothing"


class BadEnv(Env):
    """The ADS env of ``test_ads_server`` plus an LRS server on the same port."""

    def __init__(self, cache: SnapshotCache, ads: Any, port: int, reg: CollectorRegistry):
        super().__init__(cache, ads, port, reg)
        self.reports: list[LoadReport] = []
        self.channels: list[grpc.aio.Channel] = []
        self.checks = 0

    def channel(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.channels.append(ch)
        return ch

    async def healthy(self) -> None:
        """A new stream subscribes and gets the next snapshot pushed: the server serves."""
        self.checks += 1
        self.cache.set_snapshot(GROUP, snap(weights=(100, 100 + self.checks)))
        c = self.client(f"healthy-{self.checks}")
        await c.send(ENDPOINT, names=["c1"])
        first = await c.recv()
        await c.ack(first, ["c1"])
        nxt = snap(weights=(200, 200 + self.checks))
        self.cache.set_snapshot(GROUP, nxt)
        pushed = await c.recv()
        assert pushed.version_info == nxt.version(ENDPOINT)
        await c.close()


@pytest_asyncio.fixture(loop_scope="session")
async def env() -> AsyncIterator[BadEnv]:
    cache = SnapshotCache()
    reg = CollectorRegistry()
    port = free_port()
    e: BadEnv
    lrs = LrsServer(lambda r: e.reports.append(r), LrsMetrics(reg), interval_s=1.0)
    server, ads = await start_xds_server(
        cache, "127.0.0.1", port, reg, handlers=[lrs.generic_handler()]
    )
    e = BadEnv(cache, ads, port, reg)
    try:
        yield e
    finally:
        await lrs.close()
        await stop_xds_server(server, 0.5, ads)
        for c in e.clients:
            await c.close()
        for ch in e.channels:
            await ch.close()


async def status_of(call: Any, within: float = 3.0) -> grpc.StatusCode:
    """The status a stream ended with (reading whatever came before)."""
    try:
        async with asyncio.timeout(within):
            while await call.read() is not grpc.aio.EOF:
                pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    return await call.code()


def raw_ads(env: BadEnv) -> Any:
    """An ADS stream that sends bytes as they are (no serializer)."""
    return env.channel().stream_stream(
        f"/{ADS_SERVICE}/StreamAggregatedResources",
        request_serializer=None,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )()


def first_request(node_id: str = "envoy-1", type_url: str = CLUSTER) -> Any:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url)
    req.node.id = node_id
    req.node.locality.region = "r1"
    return req


# -- ADS ----------------------------------------------------------------------------------------


async def test_unknown_and_empty_type_urls_get_no_answer_and_no_metric_series(
    env: BadEnv,
) -> None:
    env.cache.set_snapshot(GROUP, snap())
    c = env.client()
    await c.subscribe_all()
    series_before = len(list(env.registry.collect()))
    for i in range(500):
        await c.send(f"{UNKNOWN}{i}", nonce=str(i), version="v", names=[f"n{i}"])
    await c.send("", nonce="1", names=["x"])
    await c.send(UNKNOWN, error="bad")  # a NACK for a type never sent
    await c.quiet()
    types = env.stream("envoy-1")["types"]
    assert set(types) == {"cds", "eds", "lds", "rds"}
    labels = {
        s.labels.get("type")
        for m in env.registry.collect()
        for s in m.samples
        if m.name == "aixds_xds_pushes"
    }
    assert labels == {"cds", "eds", "lds", "rds"}
    assert len(list(env.registry.collect())) == series_before
    # the stream itself still works
    nxt = snap(weights=(5, 6))
    env.cache.set_snapshot(GROUP, nxt)
    assert (await c.recv()).version_info == nxt.version(ENDPOINT)
    await env.healthy()


@pytest.mark.parametrize(
    "field",
    ["none", "empty-id", "id", "region", "metadata"],
)
async def test_a_missing_or_huge_node_is_refused_with_invalid_argument(
    env: BadEnv, field: str
) -> None:
    req = first_request()
    if field == "none":
        req.ClearField("node")
    elif field == "empty-id":
        req.node.id = ""
    elif field == "id":
        req.node.id = "e" * 100_000
    elif field == "region":
        req.node.locality.region = "r" * 100_000
    else:
        for i in range(300):
            req.node.metadata.fields[f"k{i}"].string_value = "m" * 10_000  # 3 MB
        assert req.ByteSize() > MAX_NODE_METADATA_BYTES
    call = raw_ads(env)
    await call.write(req.SerializeToString())
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert env.ads.status()["streams"] == []
    await env.healthy()


async def test_a_request_over_the_max_message_size_is_refused(env: BadEnv) -> None:
    req = first_request()
    req.resource_names.append("n" * (MAX_REQUEST_BYTES + 1))
    call = raw_ads(env)
    await call.write(req.SerializeToString())
    assert await status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    await env.healthy()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x12\x02\xff\xfe"],  # garbage, truncated, bad UTF-8
    ids=["garbage", "truncated", "not-utf8"],
)
async def test_bytes_that_are_not_a_request_close_the_stream_cleanly(
    env: BadEnv, body: bytes
) -> None:
    env.cache.set_snapshot(GROUP, snap())
    # as the first message
    call = raw_ads(env)
    await call.write(body)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    # and later on an established stream
    call = raw_ads(env)
    await call.write(first_request().SerializeToString())
    await call.read()
    await call.write(body)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    await eventually(lambda: env.ads.status()["streams"] == [])
    await env.healthy()


async def test_garbage_nonces_and_versions_are_ignored(env: BadEnv) -> None:
    env.cache.set_snapshot(GROUP, snap())
    c = env.client()
    last = await c.subscribe_all()
    eds = last[ENDPOINT]
    for nonce in ["garbage", "-1", "99999999999999999999", "\u00e9\U0001f600", "n" * 10_000]:
        await c.send(ENDPOINT, nonce=nonce, version="never-sent", names=["c1"])
        await c.send(ENDPOINT, nonce=nonce, names=["c1"], error="NACK of nothing")
    await c.quiet()
    assert env.cache.nacks(GROUP) == []
    # the ACKed nonce again, with a version never sent: a new request (as Envoy re-requests
    # EDS after a cluster change), answered with the current version; nothing recorded
    await c.send(ENDPOINT, nonce=eds.nonce, version="never-sent", names=["c1"])
    again = await c.recv()
    assert again.version_info == eds.version_info and again.nonce != eds.nonce
    await c.ack(again, ["c1"])
    await c.quiet()
    assert env.stream("envoy-1")["types"]["eds"]["acked_version"] == eds.version_info
    assert env.cache.nacks(GROUP) == []
    # pushes go on
    nxt = snap(weights=(7, 8))
    env.cache.set_snapshot(GROUP, nxt)
    assert (await c.recv()).version_info == nxt.version(ENDPOINT)
    await env.healthy()


async def test_a_nack_for_unknown_resources_is_recorded_once_and_the_next_version_flows(
    env: BadEnv,
) -> None:
    env.cache.set_snapshot(GROUP, snap())
    c = env.client()
    await c.send(ENDPOINT, names=["c1"])
    eds = await c.recv()
    await c.send(
        ENDPOINT, nonce=eds.nonce, names=["c1", "nope"], error="unknown cluster nope " * 1000
    )
    await c.quiet()  # nothing re-sent: that version is NACKed
    (rec,) = env.cache.nacks(GROUP)
    assert rec.version == eds.version_info
    nxt = snap(weights=(9, 9))
    env.cache.set_snapshot(GROUP, nxt)
    assert (await c.recv()).version_info == nxt.version(ENDPOINT)
    await env.healthy()


async def test_100k_resource_names_are_answered_with_the_known_ones(env: BadEnv) -> None:
    env.cache.set_snapshot(GROUP, snap(clusters=("c1", "c2")))
    c = env.client()
    names = [f"cluster-{i}" for i in range(100_000)] + ["c2"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await c.send(ENDPOINT, names=names)
    eds = await c.recv(within=5.0)
    took = loop.time() - t0
    got = [discovery_pb2.DiscoveryResponse.FromString(eds.SerializeToString()).resources]
    assert len(got[0]) == 1  # only c2 exists
    assert took < 2.0, took
    await c.ack(eds, names)
    await c.quiet()
    await env.healthy()


async def test_rapid_open_and_close_of_many_streams(env: BadEnv) -> None:
    env.cache.set_snapshot(GROUP, snap())
    ch = env.channel()
    for round_ in range(3):
        calls = [
            ch.stream_stream(
                f"/{ADS_SERVICE}/StreamAggregatedResources",
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )()
            for _ in range(100)
        ]
        for i, call in enumerate(calls):
            if i % 3:  # some never send anything, some close right after the first request
                await call.write(first_request(f"storm-{round_}-{i}"))
        for call in calls:
            call.cancel()
    await eventually(lambda: env.metric("aixds_xds_connected_envoys", group=GROUP) == 0, 5.0)
    assert env.ads.status()["streams"] == []
    await env.healthy()


async def test_clients_that_never_read_hold_one_update_and_delay_no_one(env: BadEnv) -> None:
    big = BIG
    env.cache.set_snapshot(GROUP, many(1))
    first_version = many(1).version(ENDPOINT)
    for i in range(10):  # subscribe, then never read: their senders block on flow control
        req = first_request(f"silent-{i}", ENDPOINT)
        req.resource_names.extend(big)
        await raw_ads(env).write(req.SerializeToString())
    await eventually(lambda: len(env.ads.status()["streams"]) == 10)
    good = env.client("good")
    await good.send(ENDPOINT, names=big)
    await keeps_up(env, good, await good.recv(), range(2, 12))
    for i in range(10):
        eds = env.stream(f"silent-{i}")["types"]["eds"]
        assert eds["sent_version"] == first_version and eds["awaiting_ack"]
    await env.healthy()


async def test_delta_xds_and_unknown_methods_answer_unimplemented(env: BadEnv) -> None:
    ch = env.channel()
    for method in (f"/{ADS_SERVICE}/DeltaAggregatedResources", "/no.such.Service/Call"):
        call = ch.stream_stream(method, request_serializer=None, response_deserializer=None)()
        assert await status_of(call) == grpc.StatusCode.UNIMPLEMENTED
    await env.healthy()


# -- LRS ----------------------------------------------------------------------------------------


def lrs_call(env: BadEnv) -> Any:
    return env.channel().stream_stream(
        f"/{LRS_SERVICE}/{LRS_METHOD}",
        request_serializer=lrs_pb2.LoadStatsRequest.SerializeToString,
        response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
    )()


def stats(req: Any, cluster: str, ok: int, err: int = 0) -> None:
    cs = req.cluster_stats.add(cluster_name=cluster)
    loc = cs.upstream_locality_stats.add(total_successful_requests=ok, total_error_requests=err)
    loc.total_issued_requests = max(ok, err)


async def test_lrs_without_a_node_is_refused(env: BadEnv) -> None:
    call = lrs_call(env)
    req = lrs_pb2.LoadStatsRequest()
    stats(req, "c1", 1)
    await call.write(req)
    assert await status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert env.reports == []
    await env.healthy()


async def test_lrs_garbage_cluster_stats_are_dropped_or_bounded(env: BadEnv) -> None:
    call = lrs_call(env)
    req = lrs_pb2.LoadStatsRequest()
    req.node.id = "envoy-lrs"
    await call.write(req)
    await call.read()  # the reporting interval
    huge = lrs_pb2.LoadStatsRequest()
    stats(huge, "c1", 2**64 - 1, 2**64 - 1)  # uint64 max: no Envoy served that
    stats(huge, "c2", 5, 1)
    await call.write(huge)
    many = lrs_pb2.LoadStatsRequest()
    for i in range(MAX_CLUSTER_LABELS + 200):  # unknown clusters: counted, labels bounded
        stats(many, f"nope-{i}", 1)
    await call.write(many)
    await eventually(lambda: len(env.reports) == 2)
    first, second = env.reports
    assert [c.cluster for c in first.clusters] == ["c2"]  # the implausible one is dropped
    assert (first.clusters[0].success, first.clusters[0].error) == (5, 1)
    assert len(second.clusters) == MAX_CLUSTER_LABELS + 200
    assert env.metric("aixds_lrs_dropped_cluster_stats_total") == 1
    clusters = {
        s.labels["cluster"]
        for m in env.registry.collect()
        for s in m.samples
        if m.name == "aixds_lrs_requests"
    }
    assert len(clusters) <= MAX_CLUSTER_LABELS + 1 and "_other" in clusters
    assert env.metric("aixds_lrs_requests_total", cluster="_other", outcome="success") == 200 + 1
    call.cancel()
    await env.healthy()
