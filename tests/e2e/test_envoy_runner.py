"""``aixds envoy`` against a stub ADS server: the rendered bootstrap reaches the control
plane at once (HTTP/2 on the xDS cluster, else Envoy waits out initial_fetch_timeout),
carries node id, locality and metadata, and SIGTERM or SIGHUP to ``aixds`` stops Envoy
cleanly; ``kill -9`` of ``aixds`` takes Envoy with it.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.xds import resources
from tests.support import Proc, Procs, alive, catches, descendants, free_port, wait_until

pytestmark = pytest.mark.e2e


class _StubAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Records every DiscoveryRequest and never answers."""

    def __init__(self) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()

    def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for req in request_iterator:
            self.requests.put(req)
        yield from ()


@pytest.fixture
def stub_ads() -> Iterator[tuple[_StubAds, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ads = _StubAds()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ads, port
    finally:
        server.stop(0)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_envoy_connects_and_stops_on_sigterm(stub_ads: tuple[_StubAds, int], procs: Procs) -> None:
    ads, xds_port = stub_ads
    admin, listen = free_port(), free_port()
    p = procs.aixds(
        "aixds-envoy",
        "envoy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "side-1",
        "--region", "no", "--zone", "eu-west-b", "--role", "sidecar",
        "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
        "--concurrency", "1",
    )  # fmt: skip
    t0 = time.monotonic()
    first = ads.requests.get(timeout=5)
    assert time.monotonic() - t0 < 5
    assert first.type_url == resources.CLUSTER
    assert first.node.id == "side-1"
    assert first.node.cluster == "aixds-sidecar"
    assert (first.node.locality.region, first.node.locality.zone) == ("no", "eu-west-b")
    md = first.node.metadata.fields
    assert md["role"].string_value == "sidecar"
    assert md["listen_address"].string_value == "127.0.0.1"
    assert int(md["listen_port"].number_value) == listen
    assert _port_open(admin)

    assert p.popen is not None
    _wait_for_signal_handlers(p.pid)
    os.kill(p.pid, signal.SIGTERM)  # only aixds: it must forward the signal to Envoy
    assert p.popen.wait(10) == 0
    assert not _port_open(admin)
    assert "deprecated" not in p.log.read_text(errors="replace").lower()


def _runner(procs: Procs, xds_port: int) -> tuple[Proc, int]:
    admin = free_port()
    p = procs.aixds(
        "aixds-envoy",
        "envoy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "edge-1", "--region", "no",
        "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}",
        "--concurrency", "1",
    )  # fmt: skip
    wait_until(lambda: _port_open(admin), 10, what="Envoy's admin")
    _wait_for_signal_handlers(p.pid)
    return p, admin


def _wait_for_signal_handlers(runner: int) -> None:
    """Envoy opens its admin port before it handles SIGTERM: a SIGTERM in that window
    kills it by the default action (exit 143), which is not what these tests are about."""
    (envoy,) = descendants(runner)
    wait_until(lambda: catches(envoy, signal.SIGTERM), 10, what="Envoy's SIGTERM handler")


def test_sighup_stops_envoy(stub_ads: tuple[_StubAds, int], procs: Procs) -> None:
    """A closed terminal: Envoy itself ignores SIGHUP, so ``aixds`` turns it into SIGTERM."""
    p, admin = _runner(procs, stub_ads[1])
    assert p.popen is not None
    os.kill(p.pid, signal.SIGHUP)
    assert p.popen.wait(10) == 0
    assert not _port_open(admin)


def test_envoy_dies_with_a_killed_runner(stub_ads: tuple[_StubAds, int], procs: Procs) -> None:
    """The runner asks the kernel for it. Envoy 1.40 also sets PR_SET_PDEATHSIG itself
    (strace shows it), so with this build the test would pass without the runner's part."""
    p, admin = _runner(procs, stub_ads[1])
    (envoy,) = descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)  # only aixds, not its process group
    wait_until(lambda: not alive(envoy), 5, interval=0.02, what="Envoy to exit")
    assert not _port_open(admin)
