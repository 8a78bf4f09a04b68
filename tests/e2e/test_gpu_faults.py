"""Issue 3 end to end: a GPU fault takes the replica out of Envoy within one publish interval,
it stays out after the fault is gone, and an operator clear through the API brings it back.
Real Redis, ``aixds serve``, Envoy, agents with the ``sim`` GPU source of the fake server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.fleet import AGENT_INTERVAL_S, Fleet, Load
from tests.support import Procs, RedisServer, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "t0ken"


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve("--api-token", TOKEN)
    yield f


def test_gpu_fault_removes_replica_until_operator_clears(fleet: Fleet) -> None:
    healthy = fleet.add_replica(gpu="sim")
    sick = fleet.add_replica(gpu="sim")
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 2)
    with Load(edge.url, "llama", concurrency=4) as load:
        load.wait_requests(20)
        r = httpx.post(f"{sick.url}/control", json={"gpu_fault": "xid 79"})
        assert r.status_code == 200, r.text
        t0 = time.monotonic()
        wait_until(lambda: sick.port not in edge.hosts("llama@v1"), 5, what="faulty GPU out")
        out_after = time.monotonic() - t0
        # the fault is gone on the GPU, but it latched: the replica stays out
        httpx.post(f"{sick.url}/control", json={"gpu_fault": None})
        time.sleep(3 * AGENT_INTERVAL_S)
        assert sick.port not in edge.hosts("llama@v1")
        fleet_view = httpx.get(f"{fleet.api}/v1/fleet").json()["replicas"]
        (rec,) = [x for x in fleet_view if x["replica_id"] == sick.replica_id]
        assert (
            rec["gpus"] and rec["gpus"][0]["faulty"] and "xid 79" in rec["gpus"][0]["fault_reason"]
        )
        # clearing needs the token
        url = f"{fleet.api}/v1/nodes/{sick.node}/gpu-faults/clear"
        assert httpx.post(url).status_code == 401
        assert (
            httpx.post(
                f"{fleet.api}/v1/nodes/nope/gpu-faults/clear",
                headers={"authorization": f"Bearer {TOKEN}"},
            ).status_code
            == 404
        )
        r = httpx.post(url, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200, r.text
        assert r.json()["replicas"] == [sick.replica_id]
        wait_until(lambda: sick.port in edge.hosts("llama@v1"), 5, what="replica back after clear")
        load.wait_requests(20)
    # one publish interval plus the poll, Redis, decide and Envoy: well under a second here
    assert out_after < 2 * AGENT_INTERVAL_S + 0.5, out_after
    assert load.failed == 0, load.failures[:5]
    assert load.replicas[healthy.replica_id] > 0


def test_throttled_gpu_lowers_the_weight(fleet: Fleet) -> None:
    a = fleet.add_replica(gpu="sim")
    b = fleet.add_replica(gpu="sim")
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 2)
    httpx.post(f"{b.url}/control", json={"gpu_throttle": True})
    wait_until(
        lambda: edge.hosts("llama@v1")[b.port]["weight"] < edge.hosts("llama@v1")[a.port]["weight"],
        5,
        what="throttled replica's weight to drop",
    )
    assert b.port in edge.hosts("llama@v1")  # lowered, not removed
