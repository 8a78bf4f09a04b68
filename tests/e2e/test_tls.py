"""Transport security end to end, every hop on real parts: Redis with TLS (client
certificates required) and the documented ACL, ``aixds serve`` reading it as ``aixds-cp``
and serving xDS/LRS over mutual TLS and the API over TLS, an agent publishing as
``agent-gpu-1`` over ``rediss://``, and Envoys.

The Envoy with a client certificate gets its configuration, serves traffic and reports
load; a plaintext Envoy, one speaking TLS without a certificate and one whose certificate
another CA signed get nothing (``control_plane.connected_state`` 0, no clusters), and
Envoys refuse a control plane that another CA signed or that has another name. The CLI
reads the API given the CA and fails with a clear reason without it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis

from tests.e2e.fleet import Edge, Fleet, chat
from tests.integration.test_redis_acl import ADMIN, denied, start_acl_redis
from tests.support import Procs, RedisServer, free_port, wait_until
from tests.tls_certs import Issued, Pki

pytestmark = pytest.mark.e2e


@dataclass
class Certs:
    ca: Issued
    other_ca: Issued
    server: Issued
    """The control plane's and Redis's (SANs localhost and 127.0.0.1)."""
    envoy: Issued
    rogue_envoy: Issued
    """A client certificate from ``other_ca``."""
    redis_client: Issued


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    pki = Pki(tmp_path / "pki")
    ca, other = pki.ca("ca"), pki.ca("other-ca")
    return Certs(
        ca,
        other,
        pki.issue(ca, "server"),
        pki.issue(ca, "envoy-1", client=True),
        pki.issue(other, "envoy-rogue", client=True),
        pki.issue(ca, "redis-client", client=True),
    )


@dataclass
class TlsRedis:
    srv: RedisServer
    tls_port: int
    certs: Certs

    def url(self, user: str, password: str) -> str:
        q = {
            "ssl_ca_certs": self.certs.ca.cert,
            "ssl_certfile": self.certs.redis_client.cert,
            "ssl_keyfile": self.certs.redis_client.key,
        }
        query = "&".join(f"{k}={quote(str(v))}" for k, v in q.items())
        return f"rediss://{user}:{password}@127.0.0.1:{self.tls_port}/0?{query}"


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certs) -> Iterator[TlsRedis]:
    tls_port = free_port()
    srv = start_acl_redis(
        tmp_path,
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(certs.server.cert),
        "--tls-key-file",
        str(certs.server.key),
        "--tls-ca-cert-file",
        str(certs.ca.cert),
        "--tls-auth-clients",
        "yes",
    )
    try:
        yield TlsRedis(srv, tls_port, certs)
    finally:
        srv.stop()


def aixds(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIXDS_")}
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
    )


def refused(edge: Edge) -> None:
    """``edge`` holds no connection to the control plane and no configuration."""
    assert edge.stat("control_plane.connected_state") == 0
    assert edge.dynamic_versions() == {}
    with pytest.raises(httpx.TransportError):
        chat(edge.url, "llama", timeout=2)


def test_secure_fleet(procs: Procs, tls_redis: TlsRedis, certs: Certs) -> None:
    fleet = Fleet(procs, tls_redis.srv)
    fleet.start_serve(
        "--redis",
        tls_redis.url("aixds-cp", "CHANGE-ME-cp"),
        "--tls-cert",
        str(certs.server.cert),
        "--tls-key",
        str(certs.server.key),
        "--client-ca",
        str(certs.ca.cert),
        "--lrs-interval",
        "0.5",
    )
    fleet.add_replica(
        node="gpu-1", agent_args=("--redis", tls_redis.url("agent-gpu-1", "CHANGE-ME-gpu-1"))
    )
    ca = str(certs.ca.cert)
    client = ("--tls-cert", str(certs.envoy.cert), "--tls-key", str(certs.envoy.key))
    good = fleet.add_edge(extra=("--ca", ca, *client))
    fleet.wait_routable(good, "llama", 1, timeout=30)
    assert good.stat("control_plane.connected_state") == 1
    assert good.stat("cluster.xds_cluster.ssl.handshake") >= 1
    r = chat(good.url, "llama")
    assert r.status_code == 200 and r.headers["x-replica"] == fleet.replicas[0].replica_id

    plain = fleet.add_edge()
    no_cert = fleet.add_edge(extra=("--ca", ca))
    rogue_client = (
        "--tls-cert",
        str(certs.rogue_envoy.cert),
        "--tls-key",
        str(certs.rogue_envoy.key),
    )
    rogue = fleet.add_edge(extra=("--ca", ca, *rogue_client))
    # Envoy checks the control plane too: its CA, and its name.
    untrusted = fleet.add_edge(extra=("--ca", str(certs.other_ca.cert), *client))
    wrong_name = fleet.add_edge(
        extra=("--ca", ca, *client, "--xds-server-name", "not-the-control-plane")
    )
    # Each has tried (and retried) by now: Envoy retries a failed xDS connection within ~1 s.
    time.sleep(3.0)
    for edge in (plain, no_cert, rogue, untrusted, wrong_name):
        refused(edge)
    assert untrusted.stat("cluster.xds_cluster.ssl.fail_verify_error") >= 1
    assert wrong_name.stat("cluster.xds_cluster.ssl.fail_verify_san") >= 1
    assert good.stat("cluster.xds_cluster.upstream_cx_connect_fail") == 0
    assert no_cert.stat("cluster.xds_cluster.upstream_cx_total") >= 1  # it did try

    api = f"https://127.0.0.1:{fleet.api_port}"
    verify = ssl.create_default_context(cafile=ca)
    xds = httpx.get(f"{api}/v1/xds", verify=verify, timeout=5).json()
    assert [s["node_id"] for s in xds["streams"]] == [f"edge-us-{good.port}"]
    for _ in range(20):
        chat(good.url, "llama")

    def lrs_reported() -> bool:
        text = httpx.get(f"{api}/metrics", verify=verify, timeout=5).text
        return any(
            line.startswith("aixds_lrs_requests_total") and 'outcome="success"' in line
            for line in text.splitlines()
        )

    wait_until(lrs_reported, 10, what="load reports over mutual TLS")

    # The CLI: with the CA (flag or environment) it reads the API; without, a clear error.
    ok = aixds("status", "--api", api, "--ca", ca)
    assert ok.returncode == 0, ok.stderr
    assert f"edge-us-{good.port}" in ok.stdout
    ok = aixds("rollout", "status", "--api", api, env={"AIXDS_API_CA": ca})
    assert ok.returncode == 0, ok.stderr
    bad = aixds("rollout", "status", "--api", api)
    assert bad.returncode == 2
    assert "certificate is not trusted: pass --ca" in bad.stderr, bad.stderr
    bad = aixds("status", "--api", api, "--ca", str(certs.other_ca.cert))
    assert bad.returncode == 1 and "not trusted" in bad.stderr, bad.stderr
    bad = aixds("status", "--api", f"http://127.0.0.1:{fleet.api_port}")
    assert bad.returncode == 1 and "use https://" in bad.stderr, bad.stderr

    # Every hop to Redis ran on the documented ACL without one refused command.
    admin = redis.Redis(port=tls_redis.srv.port, username=ADMIN[0], password=ADMIN[1])
    assert denied(admin) == []
    # And the serve log names no password.
    assert fleet.serve_proc is not None
    log = fleet.serve_proc.log.read_text()
    assert "CHANGE-ME" not in log and "aixds-cp:***@" in log
