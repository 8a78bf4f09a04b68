"""The xDS port over mutual TLS, black-box with real grpc.aio clients: a client with a
certificate the client CA signed gets its clusters; a plaintext client, a TLS client
without a certificate and one with a certificate from another CA get nothing. Once with
generated certificates, once with those the README's openssl commands make.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from controlplane.tls import check_server_files
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


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_pki(tmp: Path) -> Path:
    """Run the README's certificate commands (Transport security) in ``tmp``; their dir."""
    text = README.read_text()
    block = text[text.index("<!-- pki:begin -->") : text.index("<!-- pki:end -->")]
    script = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp / "pki"


@dataclass
class Env:
    port: int
    ads: AdsServer
    ca: Path
    client: tuple[Path, Path]
    rogue: tuple[Path, Path]
    """A client certificate and key from another CA."""


@pytest_asyncio.fixture(loop_scope="session", params=["generated", "readme"])
async def env(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The control plane's certificates from ``tests.tls_certs`` or, for "readme", from the
    README's openssl commands (so they are known to work with gRPC's mutual TLS)."""
    pki = Pki(tmp_path / "gen")
    rogue = pki.issue(pki.ca("other-ca"), "envoy-rogue", client=True)
    if request.param == "readme":
        if shutil.which("openssl") is None:
            pytest.skip("openssl not installed")
        d = readme_pki(tmp_path)
        ca, server = d / "ca.crt", (d / "controlplane.crt", d / "controlplane.key")
        client = (d / "envoy-edge-us-1.crt", d / "envoy-edge-us-1.key")
        check_server_files(d / "redis.crt", d / "redis.key")
        check_server_files(d / "redis-client.crt", d / "redis-client.key")
    else:
        ca_cert = pki.ca("ca")
        s, c = pki.issue(ca_cert, "server"), pki.issue(ca_cert, "envoy-1", client=True)
        ca, server, client = ca_cert.cert, (s.cert, s.key), (c.cert, c.key)
    cache = SnapshotCache()
    cache.set_snapshot("edge/r1", Snapshot.from_resources(resources()))
    port = free_port()
    creds = server_credentials(server[0], server[1], ca)
    srv, ads = await start_xds_server(
        cache, "127.0.0.1", port, CollectorRegistry(), credentials=creds
    )
    try:
        yield Env(port, ads, ca, client, (rogue.cert, rogue.key))
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


def tls_channel(env: Env, cert: tuple[Path, Path] | None) -> Any:
    return channel_to(env.port, env.ca, cert)


def channel_to(port: int, ca: Path, cert: tuple[Path, Path] | None) -> Any:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=None if cert is None else cert[1].read_bytes(),
        certificate_chain=None if cert is None else cert[0].read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


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


async def test_replaced_files_apply_to_new_connections(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    old_ca, new_ca = pki.ca("old-ca"), pki.ca("new-ca")
    old_client = pki.issue(old_ca, "old-client", client=True)
    new_client = pki.issue(new_ca, "new-client", client=True)
    live = tmp_path / "live"
    live.mkdir()
    cert, key, client_ca = live / "server.crt", live / "server.key", live / "client-ca.crt"

    def install(server: Issued, ca: Issued) -> None:
        cert.write_bytes(server.cert.read_bytes())
        key.write_bytes(server.key.read_bytes())
        client_ca.write_bytes(ca.cert.read_bytes())

    install(pki.issue(old_ca, "server-1"), old_ca)
    cache = SnapshotCache()
    cache.set_snapshot("edge/r1", Snapshot.from_resources(resources()))
    port = free_port()
    srv, ads = await start_xds_server(
        cache,
        "127.0.0.1",
        port,
        CollectorRegistry(),
        credentials=server_credentials(cert, key, client_ca),
    )
    try:
        old = (old_client.cert, old_client.key)
        new = (new_client.cert, new_client.key)
        assert (await first_cds(channel_to(port, old_ca.cert, old), "a")).resources
        # Rotation to another CA, for the server's certificate and for clients: no restart.
        install(pki.issue(new_ca, "server-2"), new_ca)
        assert (await first_cds(channel_to(port, new_ca.cert, new), "b")).resources
        with pytest.raises(grpc.aio.AioRpcError):
            await first_cds(channel_to(port, old_ca.cert, old), "c")
        # Half a rotation (a certificate without its key) is not taken: the last pair stays.
        cert.write_bytes(pki.issue(new_ca, "server-3").cert.read_bytes())
        assert (await first_cds(channel_to(port, new_ca.cert, new), "d")).resources
    finally:
        await stop(srv, 0.5, ads)
