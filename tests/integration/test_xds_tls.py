"""The xDS port over mutual TLS, black-box with real grpc.aio clients: a client with a
certificate the client CA signed gets its clusters; a plaintext client, a TLS client
without a certificate and one with a certificate from another CA get nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from controlplane.xds.ads import ADS_METHOD, ADS_SERVICE, AdsServer, start_xds_server
from controlplane.xds.ads import stop_xds_server as stop
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.credentials import server_credentials
from controlplane.xds.resources import CLUSTER
from controlplane.xds.snapshot import Snapshot
from tests.support import free_port
from tests.tls_certs import Issued, Pki
from tests.unit.test_snapshot import resources

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Env:
    port: int
    ads: AdsServer
    ca: Issued
    client: Issued
    rogue: Issued
    """A client certificate from another CA."""


@pytest_asyncio.fixture(loop_scope="session")
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    pki = Pki(tmp_path / "pki")
    ca, other = pki.ca("ca"), pki.ca("other-ca")
    server = pki.issue(ca, "server")
    cache = SnapshotCache()
    cache.set_snapshot("edge/r1", Snapshot.from_resources(resources()))
    port = free_port()
    creds = server_credentials(server.cert, server.key, ca.cert)
    srv, ads = await start_xds_server(
        cache, "127.0.0.1", port, CollectorRegistry(), credentials=creds
    )
    try:
        yield Env(
            port,
            ads,
            ca,
            pki.issue(ca, "envoy-1", client=True),
            pki.issue(other, "envoy-rogue", client=True),
        )
    finally:
        await stop(srv, 0.5, ads)


async def first_cds(channel: Any, node_id: str) -> Any:
    """Open an ADS stream, ask for clusters, return the first answer (or raise)."""
    call = channel.stream_stream(
        f"/{ADS_SERVICE}/{ADS_METHOD}",
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )()
    req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    req.node.id = node_id
    req.node.locality.region = "r1"
    try:
        await call.write(req)
        return await asyncio.wait_for(call.read(), 5.0)
    finally:
        call.cancel()
        await channel.close()


def tls_channel(env: Env, cert: Issued | None) -> Any:
    creds = grpc.ssl_channel_credentials(
        root_certificates=env.ca.cert.read_bytes(),
        private_key=None if cert is None else cert.key.read_bytes(),
        certificate_chain=None if cert is None else cert.cert.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{env.port}", creds)


async def test_client_with_certificate_gets_clusters(env: Env) -> None:
    resp = await first_cds(tls_channel(env, env.client), "envoy-1")
    assert resp.type_url == CLUSTER
    assert len(resp.resources) == 1


@pytest.mark.parametrize("who", ["plaintext", "no-cert", "other-ca"])
async def test_client_without_valid_certificate_gets_nothing(env: Env, who: str) -> None:
    channel = {
        "plaintext": lambda: grpc.aio.insecure_channel(f"127.0.0.1:{env.port}"),
        "no-cert": lambda: tls_channel(env, None),
        "other-ca": lambda: tls_channel(env, env.rogue),
    }[who]()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first_cds(channel, f"envoy-{who}")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not [s for s in env.ads.status()["streams"] if s["node_id"] == f"envoy-{who}"]
