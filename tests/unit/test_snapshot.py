"""Snapshots and the snapshot cache: content-hash versions, cached responses, consistency,
NACK records, wake-ups and the new-group hook.

The small proto builders here (``cluster``, ``cla``, ``listener``, ``route``,
``resources``) are also used by the ADS integration and end-to-end tests.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.xds.cache import NodeInfo, SnapshotCache, default_group_of
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot

# -- proto builders shared with the ADS tests ------------------------------------------------


def cluster(name: str, *, eds: bool = True, connect_timeout_s: int = 1) -> Any:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = connect_timeout_s
    if eds:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.ads.SetInParent()
        c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    else:
        c.type = cluster_pb2.Cluster.STATIC
    return c


def cla(name: str, weights: Sequence[int], port0: int = 20000) -> Any:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = a.endpoints.add()
    for i, w in enumerate(weights):
        lb = loc.lb_endpoints.add()
        sa = lb.endpoint.address.socket_address
        sa.address = "127.0.0.1"
        sa.port_value = port0 + i
        lb.load_balancing_weight.value = w
    return a


def listener(name: str, route_name: str, port: int = 10000) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = config_source_pb2.V3
    router = hcm.http_filters.add()
    router.name = "envoy.filters.http.router"
    router.typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    f = lst.filter_chains.add().filters.add()
    f.name = "envoy.filters.network.http_connection_manager"
    f.typed_config.Pack(hcm)
    return lst


def route(name: str, cluster_name: str) -> Any:
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    r = vh.routes.add()
    r.match.prefix = "/"
    r.route.cluster = cluster_name
    return rc


def resources(
    weights: Sequence[int] = (1, 2), clusters: Sequence[str] = ("c1",), port: int = 10000
) -> dict[str, list[Any]]:
    """One EDS cluster per name (all with ``weights``), one listener and its route."""
    return {
        CLUSTER: [cluster(c) for c in clusters],
        ENDPOINT: [cla(c, weights) for c in clusters],
        LISTENER: [listener("l1", "r1", port)],
        ROUTE: [route("r1", clusters[0])],
    }


def parse(body: bytes) -> Any:
    return discovery_pb2.DiscoveryResponse.FromString(body)


# -- Snapshot ----------------------------------------------------------------------------------


def test_versions_are_content_hashes_independent_of_order() -> None:
    a = Snapshot.from_resources(resources(clusters=("c1", "c2")))
    rev = {k: list(reversed(v)) for k, v in resources(clusters=("c1", "c2")).items()}
    b = Snapshot.from_resources(rev)
    assert a.versions == b.versions
    assert a == b
    assert set(a.type_urls) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    assert all(len(v) == 16 for v in a.versions.values())


def test_metadata_map_order_does_not_change_versions() -> None:
    def with_meta(keys: Sequence[str]) -> Snapshot:
        c = cluster("c1")
        for k in keys:
            c.metadata.filter_metadata[k].fields["x"].string_value = k
        return Snapshot.from_resources({CLUSTER: [c]})

    assert with_meta(["a", "b", "c"]).versions == with_meta(["c", "b", "a"]).versions


def test_versions_equal_in_another_process() -> None:
    code = (
        "from tests.unit.test_snapshot import resources\n"
        "from controlplane.xds.snapshot import Snapshot\n"
        "print(sorted(Snapshot.from_resources(resources(clusters=('c1','c2'))).versions.items()))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    mine = Snapshot.from_resources(resources(clusters=("c1", "c2")))
    assert out.strip() == str(sorted(mine.versions.items()))


def test_a_change_moves_only_its_type_and_resource_versions() -> None:
    a = Snapshot.from_resources(resources(weights=(1, 2), clusters=("c1", "c2")))
    res = resources(weights=(1, 2), clusters=("c1", "c2"))
    res[ENDPOINT][1] = cla("c2", (1, 3))
    b = Snapshot.from_resources(res)
    assert a.version(CLUSTER) == b.version(CLUSTER)
    assert a.version(LISTENER) == b.version(LISTENER)
    assert a.version(ROUTE) == b.version(ROUTE)
    assert a.version(ENDPOINT) != b.version(ENDPOINT)
    assert a.resources(ENDPOINT)["c1"].version == b.resources(ENDPOINT)["c1"].version
    assert a.resources(ENDPOINT)["c2"].version != b.resources(ENDPOINT)["c2"].version


def test_missing_types_are_empty_and_extra_types_kept() -> None:
    snap = Snapshot.from_resources({CLUSTER: [cluster("c1")]})
    assert snap.resources(ROUTE) == {}
    empty = snap.response(ROUTE)
    assert empty is not None
    assert list(parse(empty.body).resources) == []
    assert snap.response("type.googleapis.com/nothing.Here") is None


def test_full_response_parses_and_carries_every_resource() -> None:
    snap = Snapshot.from_resources(resources(clusters=("c2", "c1")))
    resp = snap.response(CLUSTER)
    assert resp is not None
    msg = parse(resp.with_nonce("42"))
    assert msg.version_info == snap.version(CLUSTER)
    assert msg.type_url == CLUSTER
    assert msg.nonce == "42"
    assert [r.type_url for r in msg.resources] == [CLUSTER, CLUSTER]
    names = []
    for r in msg.resources:
        c = cluster_pb2.Cluster()
        assert r.Unpack(c)
        names.append(c.name)
    assert names == ["c1", "c2"]
    # the hand-assembled Any is what protobuf itself writes
    assert msg.resources[0].SerializeToString() == snap.resources(CLUSTER)["c1"].any_bytes
    assert msg.SerializeToString() == resp.with_nonce("42")


def test_subset_response_omits_unknown_names_and_has_its_own_version() -> None:
    snap = Snapshot.from_resources(resources(clusters=("c1", "c2", "c3")))
    sub = snap.response(ENDPOINT, frozenset({"c1", "c3", "nope"}))
    assert sub is not None
    assert sub.names == ("c1", "c3")
    msg = parse(sub.body)
    assert [r.type_url for r in msg.resources] == [ENDPOINT, ENDPOINT]
    assert sub.version != snap.version(ENDPOINT)
    everything = snap.response(ENDPOINT, frozenset({"c1", "c2", "c3", "more"}))
    assert everything is not None
    assert everything.version == snap.version(ENDPOINT)
    assert everything is snap.response(ENDPOINT)


def test_responses_are_built_once_per_name_set() -> None:
    snap = Snapshot.from_resources(resources(clusters=("c1", "c2")))
    names = frozenset({"c1"})
    first = snap.response(ENDPOINT, names)
    assert snap.response(ENDPOINT, frozenset({"c1"})) is first
    assert snap.response(ENDPOINT) is snap.response(ENDPOINT, None)


def test_changes_carry_only_what_differs_from_the_base() -> None:
    names = frozenset({"c1", "c2", "c3"})
    a = Snapshot.from_resources(resources(clusters=("c1", "c2", "c3")))
    base = a.response(ENDPOINT, names)
    assert base is not None and base.complete
    res = resources(clusters=("c1", "c2", "c3"))
    res[ENDPOINT][1] = cla("c2", (9, 9))
    b = Snapshot.from_resources(res)
    full = b.response(ENDPOINT, names)
    delta = b.changes(ENDPOINT, names, base)
    assert full is not None and delta is not None
    assert delta.names == ("c2",)
    assert not delta.complete
    assert delta.version == full.version == b.version(ENDPOINT)
    assert delta.held == full.held
    msg = parse(delta.with_nonce("7"))
    assert msg.version_info == full.version
    assert [r.value for r in msg.resources] == [_any_value(b.resources(ENDPOINT)["c2"].any_bytes)]
    # shared: the same object for every stream at the same base
    assert b.changes(ENDPOINT, names, base) is delta
    # a base at the current version, or everything changed: the full response
    assert b.changes(ENDPOINT, names, full) is full
    res2 = resources(clusters=("c1", "c2", "c3"), weights=(4,))
    c = Snapshot.from_resources(res2)
    assert c.changes(ENDPOINT, names, base) is c.response(ENDPOINT, names)
    # the next delta is computed against what the receiver holds after the first one
    res[ENDPOINT][0] = cla("c1", (5,))
    d = Snapshot.from_resources(res)
    nxt = d.changes(ENDPOINT, names, delta)
    assert nxt is not None and nxt.names == ("c1",)


def _any_value(any_bytes: bytes) -> bytes:
    from google.protobuf import any_pb2  # type: ignore[import-untyped,unused-ignore]

    return bytes(any_pb2.Any.FromString(any_bytes).value)


def test_reuse_shares_unchanged_types_with_their_cached_responses() -> None:
    a = Snapshot.from_resources(resources(weights=(1, 2)))
    full = a.response(CLUSTER)
    b = Snapshot.from_resources(resources(weights=(1, 5))).reuse(a)
    assert b.response(CLUSTER) is full
    assert b.response(ENDPOINT) is not a.response(ENDPOINT)
    assert b.version(ENDPOINT) != a.version(ENDPOINT)


def test_from_resources_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="given twice"):
        Snapshot.from_resources({CLUSTER: [cluster("c1"), cluster("c1")]})
    with pytest.raises(ValueError, match="resource of"):
        Snapshot.from_resources({CLUSTER: [cla("c1", [1])]})
    with pytest.raises(ValueError, match="without a name"):
        Snapshot.from_resources({CLUSTER: [cluster_pb2.Cluster()]})


def test_consistent() -> None:
    assert Snapshot.from_resources(resources(clusters=("c1", "c2"))).consistent() == []
    res = resources(clusters=("c1", "c2"))
    res[ENDPOINT] = [cla("c1", [1]), cla("orphan", [1])]
    res[ROUTE].append(route("r-unused", "c1"))
    res[LISTENER].append(listener("l2", "r-missing", 10001))
    res[CLUSTER].append(cluster("static", eds=False))
    problems = Snapshot.from_resources(res).consistent()
    assert problems == [
        "EDS resource 'orphan' is referenced by no cluster",
        "a cluster references EDS resource 'c2', which is missing",
        "RDS resource 'r-unused' is referenced by no listener",
        "a listener references RDS resource 'r-missing', which is missing",
    ]


# -- SnapshotCache -----------------------------------------------------------------------------


def node_info(node_id: str = "n1", region: str = "r1", role: str = "edge") -> NodeInfo:
    return NodeInfo(node_id=node_id, region=region, role=role)


def test_node_info_from_node() -> None:
    node = base_pb2.Node(id="envoy-1", cluster="edge")
    node.locality.region = "eu"
    node.locality.zone = "eu-a"
    node.metadata.fields["role"].string_value = "sidecar"
    node.metadata.fields["listen_port"].number_value = 10001
    node.metadata.fields["tags"].list_value.values.add().string_value = "x"
    info = NodeInfo.from_node(node)
    assert (info.node_id, info.cluster, info.region, info.zone, info.role) == (
        "envoy-1",
        "edge",
        "eu",
        "eu-a",
        "sidecar",
    )
    assert info.metadata == {"role": "sidecar", "listen_port": 10001.0, "tags": ["x"]}
    assert default_group_of(info) == "sidecar/eu"
    assert NodeInfo.from_node(base_pb2.Node(id="x")).role == "edge"


async def test_set_snapshot_wakes_only_that_groups_watchers() -> None:
    cache = SnapshotCache()
    woke: list[str] = []
    w1 = cache.watch(node_info("a", "r1"), lambda: woke.append("a"))
    cache.watch(node_info("b", "r2"), lambda: woke.append("b"))
    snap = Snapshot.from_resources(resources())
    cache.set_snapshot("edge/r1", snap)
    assert woke == ["a"]
    assert cache.get("edge/r1") == snap
    assert cache.get("edge/r2") is None
    w1.cancel()
    cache.set_snapshot("edge/r1", Snapshot.from_resources(resources(weights=(3,))))
    assert woke == ["a"]


async def test_changed_at_moves_only_for_changed_types() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("g", Snapshot.from_resources(resources(weights=(1,))))
    t_cds = cache.changed_at("g", CLUSTER)
    t_eds = cache.changed_at("g", ENDPOINT)
    await asyncio.sleep(0.01)
    cache.set_snapshot("g", Snapshot.from_resources(resources(weights=(2,))))
    assert cache.changed_at("g", CLUSTER) == t_cds
    new_eds = cache.changed_at("g", ENDPOINT)
    assert t_eds is not None and new_eds is not None and new_eds > t_eds


async def test_on_new_group_called_once_per_unknown_group() -> None:
    calls: list[tuple[str, str]] = []
    cache = SnapshotCache(on_new_group=lambda g, n: calls.append((g, n.node_id)))
    cache.set_snapshot("edge/known", Snapshot.from_resources(resources()))
    cache.watch(node_info("a", "r1"), lambda: None)
    cache.watch(node_info("b", "r1"), lambda: None)
    cache.watch(node_info("c", "known"), lambda: None)
    cache.watch(node_info("d", "r1", role="sidecar"), lambda: None)
    assert calls == [("edge/r1", "a"), ("sidecar/r1", "d")]
    assert set(cache.groups()) == {"edge/r1", "edge/known", "sidecar/r1"}


async def test_on_new_group_may_set_the_snapshot_at_once() -> None:
    woke: list[int] = []
    cache = SnapshotCache(group_of=lambda n: n.node_id)

    def plan(group: str, node: NodeInfo) -> None:
        cache.set_snapshot(group, Snapshot.from_resources(resources()))

    cache.on_new_group = plan
    cache.watch(node_info("solo"), lambda: woke.append(1))
    assert woke == [1]
    assert cache.get("solo") is not None


async def test_on_new_group_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def boom(group: str, node: NodeInfo) -> None:
        raise RuntimeError("planner down")

    cache = SnapshotCache(on_new_group=boom)
    cache.watch(node_info(), lambda: None)
    assert "on_new_group" in caplog.text


async def test_nack_records() -> None:
    cache = SnapshotCache(max_nacks_per_group=2)
    cache.record_nack("g", CLUSTER, "v1", "n1", "bad 1")
    cache.record_nack("g", CLUSTER, "v2", "n2", "bad 2")
    assert cache.is_nacked("g", CLUSTER, "v1")
    assert not cache.is_nacked("g", ENDPOINT, "v1")
    assert not cache.is_nacked("other", CLUSTER, "v1")
    cache.record_nack("g", ENDPOINT, "v3", "n1", "bad 3")
    assert [(r.version, r.node_id, r.error_detail) for r in cache.nacks("g")] == [
        ("v2", "n2", "bad 2"),
        ("v3", "n1", "bad 3"),
    ]
    assert cache.nacks("other") == []


async def test_wait_for_snapshot() -> None:
    cache = SnapshotCache()
    first = Snapshot.from_resources(resources(weights=(1,)))
    waiter = asyncio.create_task(cache.wait_for_snapshot("g"), name="test-wait")
    await asyncio.sleep(0)
    cache.set_snapshot("g", first)
    assert await asyncio.wait_for(waiter, 1) == first
    assert await cache.wait_for_snapshot("g") == first
    nxt = asyncio.create_task(cache.wait_for_snapshot("g", after=first), name="test-wait-2")
    await asyncio.sleep(0.01)
    cache.set_snapshot("g", Snapshot.from_resources(resources(weights=(1,))))  # same content
    await asyncio.sleep(0.01)
    assert not nxt.done()
    second = Snapshot.from_resources(resources(weights=(2,)))
    cache.set_snapshot("g", second)
    assert await asyncio.wait_for(nxt, 1) == second
    assert cache._watchers == {}
