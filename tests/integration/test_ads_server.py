"""The SotW ADS server, black-box: a real grpc.aio server and real grpc.aio client streams.

Each test plays Envoy by hand: subscribe, ACK or NACK, re-request, reconnect; and checks
what comes back (and what does not), the cache's NACK records, status() and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from controlplane.xds.ads import (
    ADS_METHOD,
    ADS_SERVICE,
    AdsServer,
    start_xds_server,
    stop_xds_server,
)
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot
from tests.support import free_port
from tests.unit.test_snapshot import cla, resources

# grpc.aio keeps one process-wide poller that delivers events to the loop it was bound
# to: with a loop per test, a late event can land on a closed loop. One loop for all.
pytestmark = pytest.mark.asyncio(loop_scope="session")

GROUP = "edge/r1"
QUIET = 0.3
"""How long "nothing arrives" is watched for."""


class AdsClient:
    """One Envoy played by hand over a real grpc.aio stream."""

    def __init__(self, port: int, node_id: str, *, region: str = "r1", raw: bool = False) -> None:
        self.node_id = node_id
        self.region = region
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = self.channel.stream_stream(
            f"/{ADS_SERVICE}/{ADS_METHOD}",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=None if raw else discovery_pb2.DiscoveryResponse.FromString,
        )()
        self.first = True
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read(), name=f"test-client-read-{node_id}")

    async def _read(self) -> None:
        async for msg in self.call:
            self.got.put_nowait(msg)

    async def send(
        self,
        type_url: str,
        *,
        version: str = "",
        nonce: str = "",
        names: Sequence[str] = (),
        error: str | None = None,
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, version_info=version, response_nonce=nonce, resource_names=names
        )
        if self.first:
            req.node.id = self.node_id
            req.node.locality.region = self.region
            self.first = False
        if error is not None:
            req.error_detail.code = 3
            req.error_detail.message = error
        await self.call.write(req)

    async def recv(self, within: float = 2.0) -> Any:
        return await asyncio.wait_for(self.got.get(), within)

    async def quiet(self, within: float = QUIET) -> None:
        """Assert that nothing arrives for ``within`` seconds."""
        await asyncio.sleep(within)
        assert self.got.empty(), f"unexpected response: {self.got.get_nowait()}"

    async def ack(self, resp: Any, names: Sequence[str] = ()) -> None:
        await self.send(resp.type_url, version=resp.version_info, nonce=resp.nonce, names=names)

    async def subscribe_all(self, eds_names: Sequence[str] = ("c1",)) -> dict[str, Any]:
        """Subscribe to the four types like Envoy does and ACK everything; the last responses."""
        last: dict[str, Any] = {}
        await self.send(CLUSTER)
        last[CLUSTER] = await self.recv()
        await self.ack(last[CLUSTER])
        await self.send(ENDPOINT, names=eds_names)
        last[ENDPOINT] = await self.recv()
        await self.ack(last[ENDPOINT], eds_names)
        await self.send(LISTENER)
        last[LISTENER] = await self.recv()
        await self.ack(last[LISTENER])
        await self.send(ROUTE, names=["r1"])
        last[ROUTE] = await self.recv()
        await self.ack(last[ROUTE], ["r1"])
        return last

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.channel.close()


class Env:
    def __init__(self, cache: SnapshotCache, ads: AdsServer, port: int, reg: CollectorRegistry):
        self.cache = cache
        self.ads = ads
        self.port = port
        self.registry = reg
        self.clients: list[AdsClient] = []

    def client(self, node_id: str = "envoy-1", **kw: Any) -> AdsClient:
        c = AdsClient(self.port, node_id, **kw)
        self.clients.append(c)
        return c

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def stream(self, node_id: str) -> dict[str, Any]:
        (s,) = [s for s in self.ads.status()["streams"] if s["node_id"] == node_id]
        return s  # type: ignore[no-any-return]


@pytest_asyncio.fixture(loop_scope="session")
async def env() -> AsyncIterator[Env]:
    cache = SnapshotCache()
    reg = CollectorRegistry()
    port = free_port()
    server, ads = await start_xds_server(cache, "127.0.0.1", port, reg)
    e = Env(cache, ads, port, reg)
    try:
        yield e
    finally:
        await stop_xds_server(server, 0.5, ads)
        for c in e.clients:
            await c.close()


def snap(**kw: Any) -> Snapshot:
    return Snapshot.from_resources(resources(**kw))


async def eventually(pred: Any, within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- tests -------------------------------------------------------------------------------------


async def test_ack_flow_versions_status_and_metrics(env: Env) -> None:
    s1 = snap(clusters=("c1", "c2"))
    env.cache.set_snapshot(GROUP, s1)
    c = env.client()
    last = await c.subscribe_all(eds_names=["c1", "c2"])
    for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        assert last[t].type_url == t
        assert last[t].version_info == s1.version(t)
    assert len(last[CLUSTER].resources) == 2
    nonces = [int(last[t].nonce) for t in (CLUSTER, ENDPOINT, LISTENER, ROUTE)]
    assert nonces == sorted(set(nonces))
    await c.quiet()

    await eventually(lambda: env.stream("envoy-1")["types"]["rds"]["acked_version"] is not None)
    st = env.stream("envoy-1")
    assert st["group"] == GROUP
    assert st["peer"]
    for short, t in (("cds", CLUSTER), ("eds", ENDPOINT), ("lds", LISTENER), ("rds", ROUTE)):
        assert st["types"][short]["sent_version"] == s1.version(t)
        assert st["types"][short]["acked_version"] == s1.version(t)
        assert st["types"][short]["last_nack"] is None
        assert env.metric("aixds_xds_pushes_total", type=short) == 1
        assert env.metric("aixds_xds_convergence_seconds_count", type=short, group=GROUP) == 1
    assert env.metric("aixds_xds_connected_envoys", group=GROUP) == 1

    # an EDS change: only EDS is pushed, and its ACK is timed
    s2 = snap(clusters=("c1", "c2"), weights=(1, 7))
    env.cache.set_snapshot(GROUP, s2)
    eds = await c.recv()
    assert (eds.type_url, eds.version_info) == (ENDPOINT, s2.version(ENDPOINT))
    await c.ack(eds, ["c1", "c2"])
    await c.quiet()
    await eventually(
        lambda: env.metric("aixds_xds_convergence_seconds_count", type="eds", group=GROUP) == 2
    )
    assert env.metric("aixds_xds_convergence_seconds_sum", type="eds", group=GROUP) < 2.0

    await c.close()
    await eventually(lambda: env.metric("aixds_xds_connected_envoys", group=GROUP) == 0)
    assert env.ads.status()["streams"] == []


async def test_nack_is_recorded_counted_logged_and_never_resent(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    good = snap(weights=(1, 2))
    env.cache.set_snapshot(GROUP, good)
    c = env.client()
    await c.subscribe_all()

    bad = snap(weights=(1, 0))
    env.cache.set_snapshot(GROUP, bad)
    eds = await c.recv()
    assert eds.version_info == bad.version(ENDPOINT)
    reason = "Proto constraint validation failed: load_balancing_weight: value must be >= 1"
    detail = "x" * 2000 + reason  # the reason is at the end of a long message
    with caplog.at_level(logging.WARNING, logger="controlplane.xds.ads"):
        await c.send(
            ENDPOINT,
            version=good.version(ENDPOINT) or "",
            nonce=eds.nonce,
            names=["c1"],
            error=detail,
        )
        await c.quiet()  # never re-sent on this stream
    (rec,) = env.cache.nacks(GROUP)
    assert (rec.type_url, rec.version, rec.node_id) == (
        ENDPOINT,
        bad.version(ENDPOINT),
        "envoy-1",
    )
    assert rec.error_detail == detail
    assert env.metric("aixds_xds_nacks_total", type="eds", group=GROUP) == 1
    assert reason in caplog.text and "envoy-1" in caplog.text
    st = env.stream("envoy-1")["types"]["eds"]
    assert st["acked_version"] == good.version(ENDPOINT)
    assert st["last_nack"]["version"] == bad.version(ENDPOINT)
    assert env.ads.status()["nacks"][GROUP][0]["error_detail"] == detail

    # the same bad content again (a new snapshot object): still not sent
    env.cache.set_snapshot(GROUP, snap(weights=(1, 0)))
    await c.quiet()
    # nor to another Envoy of the group, nor after a reconnect
    other = env.client("envoy-2")
    await other.send(CLUSTER)
    await other.ack(await other.recv())
    await other.send(ENDPOINT, names=["c1"])
    await other.quiet()
    # the next different version is sent normally
    fixed = snap(weights=(1, 3))
    env.cache.set_snapshot(GROUP, fixed)
    for client in (c, other):
        eds = await client.recv()
        assert eds.version_info == fixed.version(ENDPOINT)
        await client.ack(eds, ["c1"])
    assert env.metric("aixds_xds_nacks_total", type="eds", group=GROUP) == 1


async def test_stale_nonces_are_ignored(env: Env) -> None:
    s1 = snap(weights=(1,), clusters=("c1", "c2"))
    env.cache.set_snapshot(GROUP, s1)
    c = env.client()
    last = await c.subscribe_all(eds_names=["c1"])
    old = last[ENDPOINT]
    s2 = snap(weights=(2,), clusters=("c1", "c2"))
    env.cache.set_snapshot(GROUP, s2)
    new = await c.recv()
    assert new.nonce != old.nonce
    # a NACK and a subscription change carrying the old nonce: both stale
    await c.send(ENDPOINT, version=old.version_info, nonce=old.nonce, names=["c1"], error="late")
    await c.send(ENDPOINT, version=old.version_info, nonce=old.nonce, names=["c1", "c2"])
    await c.send(ENDPOINT, version=old.version_info, nonce="no-such-nonce", names=["c2"])
    await c.quiet()
    assert env.cache.nacks(GROUP) == []
    assert env.stream("envoy-1")["types"]["eds"]["awaiting_ack"] is True
    await c.ack(new, ["c1"])
    await eventually(
        lambda: env.stream("envoy-1")["types"]["eds"]["acked_version"] == new.version_info
    )
    await c.quiet()


async def test_make_before_break_order(env: Env) -> None:
    env.cache.set_snapshot(GROUP, snap(weights=(1,)))
    c = env.client()
    # Startup as Envoy does it: the EDS request comes before the CDS ACK (Envoy ACKs CDS
    # once the clusters warmed) and is answered; LDS waits until CDS and EDS are ACKed.
    await c.send(CLUSTER)
    cds = await c.recv()
    assert cds.type_url == CLUSTER
    await c.send(ENDPOINT, names=["c1"])
    eds = await c.recv()
    assert eds.type_url == ENDPOINT
    await c.send(LISTENER)
    await c.quiet(0.15)
    await c.ack(eds, ["c1"])
    await c.quiet(0.15)
    await c.ack(cds)
    lds = await c.recv()
    assert lds.type_url == LISTENER
    await c.send(ROUTE, names=["r1"])  # the listener warms with its routes
    rds = await c.recv()
    assert rds.type_url == ROUTE
    await c.ack(rds, ["r1"])
    await c.ack(lds)
    await c.quiet(0.1)

    # every type changes: CDS first; nothing else until Envoy asks for EDS or ACKs CDS
    res = resources(weights=(2,), clusters=("c1",), port=10001)
    res[CLUSTER][0].connect_timeout.seconds = 2
    res[ROUTE][0].virtual_hosts[0].domains.append("example.com")
    new = Snapshot.from_resources(res)
    env.cache.set_snapshot(GROUP, new)
    cds = await c.recv()
    assert (cds.type_url, cds.version_info) == (CLUSTER, new.version(CLUSTER))
    await c.quiet(0.15)
    # the changed cluster re-requests EDS with the nonce it ACKed: answered at once
    await c.send(ENDPOINT, version=eds.version_info, nonce=eds.nonce, names=["c1"])
    eds = await c.recv()
    assert (eds.type_url, eds.version_info) == (ENDPOINT, new.version(ENDPOINT))
    await c.ack(eds, ["c1"])
    await c.quiet(0.15)  # LDS and RDS wait for the CDS ACK
    await c.ack(cds)
    lds = await c.recv()
    assert (lds.type_url, lds.version_info) == (LISTENER, new.version(LISTENER))
    await c.quiet(0.15)  # RDS changed but was not asked for: waits for the LDS ACK
    await c.ack(lds)
    rds = await c.recv()
    assert (rds.type_url, rds.version_info) == (ROUTE, new.version(ROUTE))
    await c.ack(rds, ["r1"])
    await c.quiet(0.1)

    # a CDS change that Envoy ACKs without re-requesting EDS: EDS follows the ACK
    res[CLUSTER][0].connect_timeout.seconds = 3
    res[ENDPOINT] = [cla("c1", [9])]
    third = Snapshot.from_resources(res)
    env.cache.set_snapshot(GROUP, third)
    cds = await c.recv()
    assert cds.type_url == CLUSTER
    await c.quiet(0.15)
    await c.ack(cds)
    eds = await c.recv()
    assert (eds.type_url, eds.version_info) == (ENDPOINT, third.version(ENDPOINT))
    await c.ack(eds, ["c1"])
    await c.quiet(0.1)


async def test_eds_rerequest_with_acked_nonce_is_answered(env: Env) -> None:
    s1 = snap(clusters=("c1", "c2"))
    env.cache.set_snapshot(GROUP, s1)
    c = env.client()
    last = await c.subscribe_all(eds_names=["c1"])
    eds = last[ENDPOINT]
    # Envoy after a CDS change: the same version and nonce it already ACKed
    await c.send(ENDPOINT, version=eds.version_info, nonce=eds.nonce, names=["c1"])
    again = await c.recv()
    assert again.type_url == ENDPOINT
    assert again.version_info == eds.version_info
    assert again.nonce != eds.nonce
    assert len(again.resources) == 1
    await c.ack(again, ["c1"])
    await c.quiet()

    # a changed subscription is answered at once, with only the requested names that exist
    await c.send(ENDPOINT, version=again.version_info, nonce=again.nonce, names=["c2", "gone"])
    sub = await c.recv()
    assert sub.type_url == ENDPOINT
    assert sub.version_info != again.version_info
    names = []
    for r in sub.resources:
        a = cla("x", [])
        assert r.Unpack(a)
        names.append(a.cluster_name)
    assert names == ["c2"]
    await c.ack(sub, ["c2", "gone"])
    await c.quiet()


def cla_names(resp: Any) -> list[str]:
    out = []
    for r in resp.resources:
        a = cla("x", [])
        assert r.Unpack(a)
        out.append(a.cluster_name)
    return out


async def test_eds_pushes_carry_only_changed_resources(env: Env) -> None:
    names = ["c1", "c2", "c3"]

    def weights(w1: int, w2: int, w3: int) -> Snapshot:
        res = resources(clusters=names)
        res[ENDPOINT] = [cla("c1", [w1]), cla("c2", [w2]), cla("c3", [w3])]
        return Snapshot.from_resources(res)

    env.cache.set_snapshot(GROUP, weights(1, 1, 1))
    c = env.client()
    await c.send(ENDPOINT, names=names)
    first = await c.recv()
    assert cla_names(first) == names
    await c.ack(first, names)

    s2 = weights(1, 2, 1)
    env.cache.set_snapshot(GROUP, s2)
    eds = await c.recv()
    assert (eds.version_info, cla_names(eds)) == (s2.version(ENDPOINT), ["c2"])
    await c.ack(eds, names)
    await eventually(
        lambda: env.stream("envoy-1")["types"]["eds"]["acked_version"] == eds.version_info
    )
    assert env.stream("envoy-1")["types"]["eds"]["sent_resources"] == 1

    # after a NACK Envoy may hold part of it: the next push carries everything
    env.cache.set_snapshot(GROUP, weights(1, 2, 3))
    bad = await c.recv()
    assert cla_names(bad) == ["c3"]
    await c.send(ENDPOINT, version=eds.version_info, nonce=bad.nonce, names=names, error="no")
    s4 = weights(4, 2, 3)
    env.cache.set_snapshot(GROUP, s4)
    full = await c.recv()
    assert (full.version_info, cla_names(full)) == (s4.version(ENDPOINT), names)
    await c.ack(full, names)
    # and a repeated request (Envoy re-creating clusters) is answered with everything too
    await c.send(ENDPOINT, version=full.version_info, nonce=full.nonce, names=names)
    again = await c.recv()
    assert cla_names(again) == names
    await c.ack(again, names)
    await c.quiet()


async def test_a_request_held_back_by_a_nack_gets_everything_next(env: Env) -> None:
    names = ["c1", "c2"]

    def weights(w1: int, w2: int) -> Snapshot:
        return Snapshot.from_resources({ENDPOINT: [cla("c1", [w1]), cla("c2", [w2])]})

    env.cache.set_snapshot(GROUP, weights(1, 1))
    a, b = env.client("envoy-a"), env.client("envoy-b")
    for c in (a, b):
        await c.send(ENDPOINT, names=names)
        await c.ack(await c.recv(), names)
    await asyncio.sleep(0.05)
    env.cache.set_snapshot(GROUP, weights(1, 2))
    got_a, got_b = await a.recv(), await b.recv()
    assert cla_names(got_a) == cla_names(got_b) == ["c2"]
    await b.ack(got_b, names)  # b took it; a rejects it: now NACKed for the group
    await a.send(ENDPOINT, version="x", nonce=got_a.nonce, names=names, error="bad")
    await eventually(lambda: len(env.cache.nacks(GROUP)) == 1)
    # b re-requests (say, it re-created its clusters): only the NACKed version exists
    await b.send(ENDPOINT, version=got_b.version_info, nonce=got_b.nonce, names=names)
    await b.quiet(0.2)
    # the next version answers that request in full, not as a change on top of the last
    env.cache.set_snapshot(GROUP, weights(3, 2))
    assert cla_names(await b.recv()) == names
    assert cla_names(await a.recv()) == names  # a NACKed: everything too


async def test_reconnect_with_empty_nonce_gets_everything(env: Env) -> None:
    s1 = snap(clusters=("c1",))
    env.cache.set_snapshot(GROUP, s1)
    c1 = env.client()
    last = await c1.subscribe_all()
    await c1.close()

    c2 = env.client()  # same node id, a new stream: Envoy sends its versions, no nonce
    await c2.send(CLUSTER, version=last[CLUSTER].version_info)
    cds = await c2.recv()
    assert cds.version_info == s1.version(CLUSTER)
    await c2.ack(cds)
    await c2.send(ENDPOINT, version=last[ENDPOINT].version_info, names=["c1"])
    eds = await c2.recv()
    assert eds.version_info == s1.version(ENDPOINT)
    assert len(eds.resources) == 1
    await c2.ack(eds, ["c1"])
    await c2.send(LISTENER, version=last[LISTENER].version_info)
    assert (await c2.recv()).version_info == s1.version(LISTENER)


async def test_moving_to_another_control_plane_resends_the_same_versions(env: Env) -> None:
    """Envoy whose control plane died reconnects to another one (``--xds a,b``) and sends
    what it ACKed there: versions, and maybe a nonce this server never sent. Both built
    the same snapshot from the same Redis, so the content hashes agree: it is answered in
    full with the very versions it has (nothing goes back), its ACKs are taken, and the
    next change reaches it as a change."""
    s1 = snap(clusters=("c1",))
    env.cache.set_snapshot(GROUP, s1)
    a = env.client()
    last = await a.subscribe_all()
    await a.close()

    cache_b = SnapshotCache()
    cache_b.set_snapshot(GROUP, snap(clusters=("c1",)))  # built on its own: same content
    port_b = free_port()
    server_b, ads_b = await start_xds_server(cache_b, "127.0.0.1", port_b, CollectorRegistry())
    b = AdsClient(port_b, "envoy-1")
    try:
        for t, names in ((CLUSTER, ()), (ENDPOINT, ("c1",)), (LISTENER, ()), (ROUTE, ("r1",))):
            old = last[t]
            await b.send(t, version=old.version_info, nonce=old.nonce, names=names)
            got = await b.recv()
            assert got.version_info == old.version_info == s1.version(t)
            assert len(got.resources) == len(old.resources)
            await b.ack(got, names)
        await b.quiet()
        (st,) = ads_b.status()["streams"]
        assert {k: v["acked_version"] for k, v in st["types"].items()} == {
            "cds": s1.version(CLUSTER),
            "eds": s1.version(ENDPOINT),
            "lds": s1.version(LISTENER),
            "rds": s1.version(ROUTE),
        }
        s2 = snap(clusters=("c1",), weights=(9,))
        cache_b.set_snapshot(GROUP, s2)
        eds = await b.recv()
        assert (eds.type_url, eds.version_info) == (ENDPOINT, s2.version(ENDPOINT))
    finally:
        await b.close()
        await stop_xds_server(server_b, 0.5, ads_b)


async def test_streams_of_a_group_share_serialized_bytes(env: Env) -> None:
    names = ["c1", "c2"]
    env.cache.set_snapshot(GROUP, snap(clusters=names))
    raws = [env.client(f"envoy-{i}", raw=True) for i in range(2)]
    for r in raws:
        await r.send(ENDPOINT, names=names)  # no CDS subscription: EDS is not gated
    got: list[bytes] = [await r.recv() for r in raws]
    first = env.cache.get(GROUP)
    assert first is not None
    base = first.response(ENDPOINT, frozenset(names))
    assert base is not None
    for change in (
        Snapshot.from_resources(
            {**resources(clusters=names), ENDPOINT: [cla("c1", [4]), cla("c2", [5])]}
        ),
        Snapshot.from_resources(
            {**resources(clusters=names), ENDPOINT: [cla("c1", [4]), cla("c2", [6])]}
        ),
    ):
        for r, b in zip(raws, got, strict=True):
            m = discovery_pb2.DiscoveryResponse.FromString(b)
            await r.send(ENDPOINT, version=m.version_info, nonce=m.nonce, names=names)
        await asyncio.sleep(0.05)  # both ACKs in: both streams hold the same version
        env.cache.set_snapshot(GROUP, change)
        got = [await r.recv() for r in raws]
        parsed = [discovery_pb2.DiscoveryResponse.FromString(b) for b in got]
        assert parsed[0].nonce != parsed[1].nonce
        assert parsed[0].version_info == change.version(ENDPOINT)
        # identical bytes up to the nonce field, which is appended last
        bodies = [b[: len(b) - len(p.nonce) - 2] for b, p in zip(got, parsed, strict=True)]
        assert bodies[0] == bodies[1]
        # and that body is the one the group's snapshot cached (built once, unit-tested)
        current = env.cache.get(GROUP)
        assert current is not None
        expected = current.changes(ENDPOINT, frozenset(names), base)
        assert expected is not None and expected.body == bodies[0]
        base = expected
    assert len(parsed[0].resources) == 1  # the second change touched one cluster


BIG = [f"c{i}" for i in range(50)]


def many(w: int) -> Snapshot:
    """50 EDS clusters of 200 endpoints each, all of weight ``w``."""
    return Snapshot.from_resources({ENDPOINT: [cla(n, [w] * 200) for n in BIG]})


async def keeps_up(env: Env, good: AdsClient, resp: Any, weights: range) -> Any:
    """Publish ``many(w)`` for each weight; ``good`` ACKs and gets each within 0.5 s.
    Returns its last response."""
    loop = asyncio.get_running_loop()
    for w in weights:
        s = many(w)
        t0 = loop.time()
        env.cache.set_snapshot(GROUP, s)
        await good.ack(resp, BIG)
        resp = await good.recv(within=1.0)
        assert resp.version_info == s.version(ENDPOINT)
        assert loop.time() - t0 < 0.5
    return resp


async def test_a_stream_that_never_acks_does_not_delay_another(env: Env) -> None:
    big = BIG
    env.cache.set_snapshot(GROUP, many(1))
    stuck = env.client("stuck")  # reads its first response and never ACKs
    await stuck.send(ENDPOINT, names=big)
    first_stuck = await stuck.recv()
    silent = env.client("silent")  # never even reads: its sender blocks on flow control
    await silent.send(ENDPOINT, names=big)
    silent.reader.cancel()
    good = env.client("good")
    await good.send(ENDPOINT, names=big)
    resp = await keeps_up(env, good, await good.recv(), range(2, 22))
    # the stuck stream still holds only its first response (no queue of old versions)
    await stuck.quiet(0.1)
    assert env.stream("stuck")["types"]["eds"]["sent_version"] == first_stuck.version_info
    # once it ACKs, it gets the LATEST snapshot, not the ones it missed
    await stuck.ack(first_stuck, big)
    latest = await stuck.recv()
    assert latest.version_info == resp.version_info
    await stuck.quiet(0.1)


async def test_first_request_without_node_is_rejected(env: Env) -> None:
    c = env.client()
    c.first = False
    await c.send(CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.reader
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_on_new_group_plans_and_the_stream_gets_it(env: Env) -> None:
    seen: list[str] = []

    def plan(group: str, node: Any) -> None:
        seen.append(f"{group}:{node.node_id}")
        env.cache.set_snapshot(group, snap())

    env.cache.on_new_group = plan
    c = env.client("new-1", region="r9")
    await c.send(CLUSTER)
    cds = await c.recv()
    assert cds.type_url == CLUSTER
    assert seen == ["edge/r9:new-1"]


async def test_stop_ends_open_streams_with_unavailable_within_the_grace() -> None:
    cache = SnapshotCache()
    port = free_port()
    server, ads = await start_xds_server(cache, "127.0.0.1", port, CollectorRegistry())
    cache.set_snapshot(GROUP, snap())
    clients = [AdsClient(port, f"envoy-{i}") for i in range(3)]
    try:
        for c in clients:
            await c.send(CLUSTER)
            await c.recv()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await stop_xds_server(server, 0.5, ads)
        assert loop.time() - t0 < 1.0
        for c in clients:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(c.reader, 2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ads.status()["streams"] == []
    finally:
        for c in clients:
            await c.close()


async def test_stop_without_the_servicer_is_bounded_too() -> None:
    cache = SnapshotCache()
    port = free_port()
    server, _ = await start_xds_server(cache, "127.0.0.1", port, CollectorRegistry())
    cache.set_snapshot(GROUP, snap())
    c = AdsClient(port, "envoy-1")
    try:
        await c.send(CLUSTER)
        await c.recv()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await stop_xds_server(server, 0.2)
        assert loop.time() - t0 < 1.0
        await asyncio.wait_for(asyncio.gather(c.reader, return_exceptions=True), 2)
    finally:
        await c.close()
