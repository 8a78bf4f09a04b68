"""Issue 5 end to end: rollouts through the config API on real Redis, ``aixds serve``, Envoy,
fake vLLM servers and agents. Requests are cheap (max_tokens 1, 1 ms per token) so a
few thousand go through in seconds.

Timing is measured from the client's side: every response is recorded with the time its
request was sent and the replica (``x-replica``) that answered. "Within 100 ms of the API
answering" means: no request sent 100 ms or more after the API's answer reached the old
version (the API answers once the Envoys ACKed the change, so the measured lag is ~0).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.fleet import Edge, Fleet, Load, Replica
from tests.metrics import metric_sum, scrape
from tests.support import Procs, RedisServer, free_port, wait_port, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
FAST = ("--ttft-ms", "1", "--tpot-ms", "1", "--max-running", "64")
BODY = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
SERVE_ARGS = (
    "--api-token",
    TOKEN,
    "--lrs-interval",
    "0.5",
    "--drain-settle",
    "0.3",
    "--drain",
    "2",
)


@dataclass(frozen=True, slots=True)
class Sample:
    sent: float
    done: float
    status: int
    replica: str


class TimedLoad(Load):
    """``Load`` that also keeps (sent, done, status, replica) for every request."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.samples: list[Sample] = []

    async def _main(self) -> None:
        # One client (one connection) per worker: a shared httpx pool slows down as
        # concurrency grows (measured: 16 workers on one pool made half the requests of 4).
        async def worker() -> None:
            async with httpx.AsyncClient(timeout=15.0) as client:
                await self._worker(client)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": self.max_tokens,
        }
        url = f"{self.base}/v1/chat/completions"
        while not self._stop.is_set():
            sent = time.time()
            try:
                r = await client.post(url, json=body, headers=self.headers)
            except httpx.HTTPError as e:
                with self._lock:
                    self.errors.append(repr(e))
                    self.failures.append((time.time(), repr(e)))
                    self.samples.append(Sample(sent, time.time(), 0, "?"))
                await asyncio.sleep(0.01)
                continue
            rep = r.headers.get("x-replica", "?")
            with self._lock:
                self.status[r.status_code] += 1
                self.replicas[rep] += 1
                self.samples.append(Sample(sent, time.time(), r.status_code, rep))
                if r.status_code != 200:
                    self.failures.append((time.time(), f"{r.status_code} {rep} {r.text[:200]}"))

    def since(self, t: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.sent >= t]


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve(*SERVE_ARGS)
    yield f


def api(fleet: Fleet, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
    r = httpx.request(method, fleet.api + path, json=body, headers=AUTH if auth else {}, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def metric(fleet: Fleet, name: str, **labels: str) -> float:
    """``name``'s value on the control plane (0 while the series does not exist)."""
    return metric_sum(scrape(f"{fleet.api}/metrics"), name, **labels)


def wait_hosts(edge: Edge, cluster: str, n: int) -> None:
    wait_until(lambda: len(edge.hosts(cluster)) == n, 20, what=f"{n} hosts in {cluster}")


def share(samples: list[Sample], replicas: list[Replica]) -> float:
    ids = {r.replica_id for r in replicas}
    ok = [s for s in samples if s.status == 200]
    return sum(1 for s in ok if s.replica in ids) / max(1, len(ok))


def wait_samples(load: TimedLoad, t: float, n: int, timeout: float = 60.0) -> list[Sample]:
    wait_until(lambda: len(load.since(t)) >= n, timeout, interval=0.1, what=f"{n} requests")
    return load.since(t)


def lag_to(samples: list[Sample], t_api: float, old: list[Replica]) -> float:
    """When the last request that reached ``old`` was sent, relative to ``t_api`` (negative:
    before the API answered)."""
    ids = {r.replica_id for r in old}
    return max(s.sent for s in samples if s.replica in ids) - t_api


def route_version(edge: Edge) -> str:
    dump = edge.admin_json("/config_dump?resource=dynamic_route_configs")
    (rc,) = dump["configs"]
    return str(rc["version_info"])


def recorded_stable(fleet: Fleet, model: str = "llama") -> str | None:
    """The version recorded for the model in the stored intent (None: none yet)."""
    doc = api(fleet, "GET", "/v1/intent")["doc"] or {}
    r = doc.get("rollouts", {}).get(model)
    return None if r is None else str(r["stable"])


def two_versions(
    fleet: Fleet, n_v1: int, n_v2: int, **kw: Any
) -> tuple[list[Replica], list[Replica], Edge]:
    v1 = [fleet.add_replica("llama", "v1", server_args=FAST) for _ in range(n_v1)]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", n_v1)
    wait_until(lambda: recorded_stable(fleet) == "v1", 10, what="v1 recorded at first sight")
    v2 = [fleet.add_replica("llama", "v2", server_args=FAST, **kw) for _ in range(n_v2)]
    wait_hosts(edge, "llama@v2", n_v2)
    return v1, v2, edge


def test_canary_split_sticky_sessions_restart_and_promote(fleet: Fleet) -> None:
    v1, v2, edge = two_versions(fleet, 2, 1)
    with TimedLoad(edge.url, "llama", concurrency=16, max_tokens=1) as load:
        load.wait_requests(100)
        doc = api(fleet, "POST", "/v1/rollouts/llama", {"to": "v2", "canary_percent": 10})
        t_api = time.time()
        assert doc["converged"] and doc["rollout"]["traffic"] == {"v1": 90.0, "v2": 10.0}
        split = share(wait_samples(load, t_api, 2000), v2)
        print(f"canary 10%: measured {split:.2%} over {len(load.since(t_api))} requests")
        assert 0.07 <= split <= 0.13

        # sticky: a session keeps its version; x-model-version reaches a named version
        versions_of: dict[str, set[str]] = {}
        by_replica = {r.replica_id: r.version for r in v1 + v2}
        with httpx.Client(base_url=edge.url, timeout=10) as c:
            for i in range(80):
                for _ in range(3):
                    r = c.post(
                        "/v1/chat/completions",
                        json=BODY,
                        headers={"x-session-id": f"session-{i}"},
                    )
                    assert r.status_code == 200
                    versions_of.setdefault(f"s{i}", set()).add(by_replica[r.headers["x-replica"]])
            for _ in range(10):
                r = c.post(
                    "/v1/chat/completions",
                    json=BODY,
                    headers={"x-model-version": "v2"},
                )
                assert r.headers["x-replica"] == v2[0].replica_id
        assert all(len(v) == 1 for v in versions_of.values()), versions_of
        assert {next(iter(v)) for v in versions_of.values()} == {"v1", "v2"}

        # a control-plane restart mid-canary keeps the split (same routes, same version)
        before = route_version(edge)
        assert fleet.serve_proc is not None
        fleet.serve_proc.kill(signal.SIGKILL)
        wait_until(lambda: edge.stat("control_plane.connected_state") == 0, 5, what="disconnect")
        fleet.start_serve(*SERVE_ARGS)
        wait_until(lambda: edge.stat("control_plane.connected_state") == 1, 10, what="reconnect")
        wait_until(
            lambda: all(
                t["acked_version"]
                for t in httpx.get(f"{fleet.api}/v1/xds").json()["streams"][0]["types"].values()
            ),
            10,
            what="re-converged",
        )
        assert route_version(edge) == before
        t_restart = time.time()
        split = share(wait_samples(load, t_restart, 2000), v2)
        print(f"canary 10% after restart: measured {split:.2%}")
        assert 0.07 <= split <= 0.13
        assert api(fleet, "GET", "/v1/rollouts/llama")["traffic"] == {"v1": 90.0, "v2": 10.0}

        # promote: v2 takes everything at once; v1 drains (DRAINING), then its cluster goes
        api(fleet, "POST", "/v1/rollouts/llama/promote", {})
        t_promote = time.time()
        wait_until(
            lambda: all(
                h["health"].get("eds_health_status") == "DRAINING"
                for h in edge.hosts("llama@v1").values()
            ),
            3,
            what="v1 hosts DRAINING",
        )
        wait_until(lambda: "llama@v1" not in edge.dynamic_versions(), 5, what="v1 removed")
        assert share(load.since(t_promote + 0.1), v2) == 1.0
        load.wait_requests(100)
    assert load.failed == 0, load.failures[:5]


def test_blue_green_switch_and_rollback_under_load(fleet: Fleet) -> None:
    v1, v2, edge = two_versions(fleet, 1, 1)
    with TimedLoad(edge.url, "llama", concurrency=16, max_tokens=1) as load:
        load.wait_requests(300)
        t_call = time.time()
        doc = api(fleet, "POST", "/v1/rollouts/llama", {"to": "v2"})
        t_api = time.time()
        assert doc["converged"] and doc["rollout"]["traffic"] == {"v2": 100.0}
        after = wait_samples(load, t_api, 600)
        switch_lag = lag_to(load.since(t_call - 1), t_api, v1)
        assert all(s.replica == v2[0].replica_id for s in after if s.sent >= t_api + 0.1)
        # the old version drains: DRAINING in Envoy once the routes have moved
        wait_until(
            lambda: all(
                h["health"].get("eds_health_status") == "DRAINING"
                for h in edge.hosts("llama@v1").values()
            ),
            3,
            what="v1 hosts DRAINING",
        )

        t_call2 = time.time()
        doc = api(fleet, "POST", "/v1/rollouts/llama/rollback", {"reason": "e2e"})
        t_api2 = time.time()
        assert doc["rollout"]["traffic"] == {"v1": 100.0}
        assert doc["rollout"]["last_rollback"]["reason"] == "e2e"
        back = wait_samples(load, t_api2, 600)
        rollback_lag = lag_to(load.since(t_call2 - 1), t_api2, v2)
        assert all(s.replica == v1[0].replica_id for s in back if s.sent >= t_api2 + 0.1)
    print(
        f"switch: API answered in {t_api - t_call:.3f}s, last request to v1 sent "
        f"{switch_lag * 1000:+.1f} ms from the answer; rollback: API {t_api2 - t_call2:.3f}s, "
        f"last request to v2 sent {rollback_lag * 1000:+.1f} ms from it; {load.total} requests"
    )
    assert switch_lag <= 0.1 and rollback_lag <= 0.1
    assert load.failed == 0, load.failures[:5]


def test_failing_canary_is_rolled_back_automatically(fleet: Fleet) -> None:
    _, v2, edge = two_versions(fleet, 2, 1)
    # the new version is bad: it answers 30 % of its requests with 500
    r = httpx.post(f"{v2[0].url}/control", json={"error_rate": 0.3}, timeout=5)
    assert r.status_code == 200, r.text
    with TimedLoad(edge.url, "llama", concurrency=16, max_tokens=1) as load:
        load.wait_requests(100)
        api(fleet, "POST", "/v1/rollouts/llama", {"to": "v2", "canary_percent": 10})
        t_start = time.time()

        def rolled_back() -> bool:
            lr = api(fleet, "GET", "/v1/rollouts/llama")["last_rollback"]
            return lr is not None and lr["trigger"] == "auto"

        wait_until(rolled_back, 10, interval=0.05, what="automatic rollback")
        took = time.time() - t_start
        ro = api(fleet, "GET", "/v1/rollouts/llama")
        after = wait_samples(load, ro["last_rollback"]["at"] + 0.1, 500)
    print(
        f"automatic rollback {took:.2f}s after the canary started: "
        f"{ro['last_rollback']['reason']}; {load.failed} failed of {load.total}"
    )
    assert took < 10
    assert ro["traffic"] == {"v1": 100.0} and ro["canary"] is None
    assert "error rate" in ro["last_rollback"]["reason"]
    # the stable version never failed: Envoy counted no 5xx (not even "no healthy
    # upstream") on its cluster, and every failed request was a 500 from the canary
    assert edge.stat("cluster.llama@v1.upstream_rq_5xx") == 0
    v2_ids = {r.replica_id for r in v2}
    failed = [s for s in load.samples if s.status != 200]
    assert failed and all(s.status == 500 and s.replica in v2_ids for s in failed), failed[:5]
    assert all(s.status == 200 for s in after)
    # visible in metrics and logs
    assert metric(fleet, "aixds_rollbacks_total", model="llama", trigger="auto") == 1.0
    assert fleet.serve_proc is not None
    log_text = fleet.serve_proc.log.read_text()
    assert "AUTOMATIC ROLLBACK of llama from v2 to v1" in log_text


def test_api_and_cli_reject_bad_writes_and_drive_a_rollout(fleet: Fleet) -> None:
    fleet.add_replica("llama", "v1", server_args=FAST)
    fleet.add_replica("llama", "v2", server_args=FAST)
    v3 = fleet.add_replica("llama", "v3", server_args=FAST)

    def versions() -> dict[str, int]:
        (m,) = httpx.get(f"{fleet.api}/v1/models").json()["models"]
        return {v["version"]: v["replicas"]["ready"] for v in m["versions"]}

    wait_until(lambda: versions() == {"v1": 1, "v2": 1, "v3": 1}, 10, what="three versions")
    # v3 starts reloading: it stays listed, with no ready replica
    httpx.post(f"{v3.url}/control", json={"load_time": 120}, timeout=5).raise_for_status()
    wait_until(lambda: versions() == {"v1": 1, "v2": 1, "v3": 0}, 10, what="v3 loading")
    u = f"{fleet.api}/v1/rollouts/llama"

    def post(url: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(url, json=body, headers=AUTH if headers is None else headers, timeout=10)

    cases = [
        (post(u, {"to": "v2"}, {}), 401, "unauthorized"),
        (post(u, {"to": "v2"}, {"authorization": "Bearer wrong"}), 401, "unauthorized"),
        (post(u, {"to": "v2", "canary_percent": 101}), 422, "invalid_request"),
        (post(u, {"version": "v2"}), 422, "invalid_request"),
        (post(f"{u}/percent", {"percent": "x"}), 422, "invalid_request"),
        (post(f"{fleet.api}/v1/rollouts/mistral", {"to": "v1"}), 404, "unknown_model"),
        (post(u, {"to": "v9"}), 404, "unknown_version"),
        (post(u, {"to": "v3", "canary_percent": 5}), 409, "not_enough_ready_replicas"),
        (post(f"{u}/promote", {}), 409, "no_canary"),
        (post(u, {"to": "v1", "revision": 41}), 409, "revision_conflict"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, (status, code, r.text)
        assert r.json()["error"] == code and r.json()["detail"]

    env = {**os.environ, "AIXDS_API_TOKEN": TOKEN}
    cli = [sys.executable, "-m", "controlplane", "rollout"]

    def run(*args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args, "--api", fleet.api],
            env=env if token else {k: v for k, v in env.items() if k != "AIXDS_API_TOKEN"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    p = run("start", "llama", "--to", "v1", "--canary", "10", token=False)
    assert p.returncode == 1 and "401 unauthorized" in p.stderr
    p = run("start", "llama", "--to", "v1")  # a pin or a switch: the version first seen
    assert p.returncode == 0, p.stderr
    p = run("start", "llama", "--to", "v2", "--canary", "20")
    assert p.returncode == 0 and "v1 80%, v2 20%" in p.stdout, p.stdout
    p = run("set", "llama", "30")
    assert p.returncode == 0 and "v1 70%, v2 30%" in p.stdout, p.stdout
    p = run("rollback", "llama", "--reason", "cli says so")
    assert p.returncode == 0 and "cli says so" in p.stdout, p.stdout
    p = run("status", "llama")
    assert p.returncode == 0 and "last rollback (manual" in p.stdout, p.stdout
    p = run("status", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["rollouts"][0]["model"] == "llama"
    p = run("promote", "llama")
    assert p.returncode == 1 and "409 no_canary" in p.stderr
    assert run("status", "mistral").returncode == 1
    # a switch needs ready replicas: v3 is still loading
    p = run("start", "llama", "--to", "v3")
    assert p.returncode == 1 and "not_enough_ready_replicas" in p.stderr

    # a second control-plane replica on the same Redis follows every change at once, and
    # exactly one of the two acts for automatic rollback
    api2 = free_port()
    fleet.procs.aixds(
        "serve-second",
        "serve",
        "--redis",
        fleet.redis.url,
        "--xds",
        f"127.0.0.1:{free_port()}",
        "--api",
        f"127.0.0.1:{api2}",
        *SERVE_ARGS,
    )
    wait_port(api2, timeout=15)
    second = f"http://127.0.0.1:{api2}"
    wait_until(lambda: httpx.get(f"{second}/healthz").json()["intent_synced"], 10, what="sync")
    assert httpx.get(f"{second}/v1/rollouts/llama").json()["last_rollback"]["reason"] == (
        "cli says so"
    )
    api(fleet, "POST", "/v1/rollouts/llama", {"to": "v2", "canary_percent": 5})
    t = time.time()
    wait_until(
        lambda: httpx.get(f"{second}/v1/rollouts/llama").json()["canary_percent"] == 5.0,
        2,
        interval=0.005,
        what="second replica to follow",
    )
    print(f"second control-plane replica followed in {(time.time() - t) * 1000:.1f} ms")
    time.sleep(1.0)  # a guard tick on both
    guards = [httpx.get(f"{u}/v1/rollouts").json()["guard"] for u in (fleet.api, second)]
    assert sorted(g["acting"] for g in guards) == [False, True], guards
    assert guards[0]["lock_holder"] == guards[1]["lock_holder"] == guards[0]["this_replica"]


def test_drain_a_node_and_a_replica_under_load_with_the_cli(fleet: Fleet) -> None:
    reps = [fleet.add_replica("llama", "v1", server_args=FAST) for _ in range(3)]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 3)
    env = {**os.environ, "AIXDS_API_TOKEN": TOKEN}

    def drain(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane", "drain", *args, "--api", fleet.api],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def health(r: Replica) -> str:
        return str(edge.hosts("llama@v1")[r.port]["health"].get("eds_health_status", "HEALTHY"))

    p = drain("no-such-node")
    assert p.returncode == 1 and "404 unknown_target" in p.stderr, p.stderr
    p = drain("a/b/c")
    assert p.returncode == 1 and "422 bad_target" in p.stderr, p.stderr
    with TimedLoad(edge.url, "llama", concurrency=16, max_tokens=1) as load:
        load.wait_requests(200)
        p = drain(reps[0].node)  # the whole node
        t_api = time.time()
        assert p.returncode == 0, p.stderr
        assert f"node {reps[0].node}: {reps[0].replica_id}" in p.stdout, p.stdout
        after = wait_samples(load, t_api, 400)
        assert all(s.replica != reps[0].replica_id for s in after if s.sent >= t_api + 0.1)
        assert health(reps[0]) == "DRAINING"  # still known to Envoy: in-flight requests finish
        # a replica too, through the API, with the revision it saw
        rev = httpx.get(f"{fleet.api}/v1/drains", timeout=5).json()["revision"]
        doc = api(fleet, "POST", f"/v1/drains/{reps[1].replica_id}", {"revision": rev})
        t_api2 = time.time()
        assert doc["changed"] and doc["converged"]
        assert [d["target"] for d in doc["drained"]] == sorted([reps[0].node, reps[1].replica_id])
        after = wait_samples(load, t_api2, 300)
        assert {s.replica for s in after if s.sent >= t_api2 + 0.1} == {reps[2].replica_id}
        # back in service
        p = drain("--undo", reps[0].node)
        assert p.returncode == 0, p.stderr
        r = httpx.delete(f"{fleet.api}/v1/drains/{reps[1].replica_id}", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["drained"] == [], r.text
        t_back = time.time()
        wait_until(
            lambda: {s.replica for s in load.since(t_back + 0.1)} == {r.replica_id for r in reps},
            20,
            what="all three replicas serving again",
        )
    p = drain("--list")
    assert p.returncode == 0 and "none" in p.stdout, p.stdout
    assert load.failed == 0, load.failures[:5]


def test_a_bigger_new_version_takes_no_traffic_until_a_rollout(fleet: Fleet) -> None:
    """Issue 9: blue (v1) serves; green (v2) comes up beside it, with more replicas and a
    greater name, and takes nothing (but header-routed requests) until an operator starts
    a canary; then promote and rollback. Finally blue dies: traffic fails open to green,
    visibly, and returns to blue when it serves again."""
    blue = [fleet.add_replica("llama", "v1", server_args=FAST) for _ in range(2)]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 2)
    wait_until(lambda: recorded_stable(fleet) == "v1", 10, what="v1 recorded at first sight")
    env = {**os.environ, "AIXDS_API_TOKEN": TOKEN}
    by_header = {"x-model-version": "v2"}
    with TimedLoad(edge.url, "llama", concurrency=16, max_tokens=1) as load:
        load.wait_requests(100)
        green = [fleet.add_replica("llama", "v2", server_args=FAST) for _ in range(3)]
        wait_hosts(edge, "llama@v2", 3)
        t_green = time.time()
        wait_samples(load, t_green, 1000)
        with httpx.Client(base_url=edge.url, timeout=10) as c:
            header_routed = {
                c.post("/v1/chat/completions", json=BODY, headers=by_header).headers["x-replica"]
                for _ in range(30)
            }
        assert header_routed <= {r.replica_id for r in green}, header_routed
        t_canary = time.time()
        p = subprocess.run(
            [sys.executable, "-m", "controlplane", "rollout", "start", "llama", "--to", "v2",
             "--canary", "10", "--api", fleet.api],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        t_started = time.time()
        assert p.returncode == 0 and "v1 90%, v2 10%" in p.stdout, (p.stdout, p.stderr)
        before = [s for s in load.samples if s.sent < t_canary]
        assert len(before) >= 1100 and share(before, green) == 0.0
        canary = wait_samples(load, t_started, 2000)
        split = share(canary, green)

        api(fleet, "POST", "/v1/rollouts/llama/promote", {})
        t_promote = time.time()
        promoted = wait_samples(load, t_promote + 0.1, 500)
        api(fleet, "POST", "/v1/rollouts/llama/rollback", {"reason": "e2e"})
        t_back = time.time()
        back = wait_samples(load, t_back + 0.1, 500)
    print(
        f"green up beside blue: 0 of {len(before)} requests reached it; canary 10%: "
        f"measured {split:.2%} over {len(canary)} requests; promote: {share(promoted, green):.0%}"
        f" to v2; rollback: {share(back, blue):.0%} to v1; {load.total} requests"
    )
    assert 0.07 <= split <= 0.13
    assert share(promoted, green) == 1.0 and share(back, blue) == 1.0
    assert load.failed == 0, load.failures[:5]

    # blue dies: fail open to green (intent unchanged), visible in API, status, metric, log
    for r in blue:
        r.server.kill()
    ro: dict[str, Any] = {}

    def failed_open() -> bool:
        ro.update(api(fleet, "GET", "/v1/rollouts/llama"))
        return ro["fallback"] == "v2" and ro["traffic"] == {"v2": 100.0}

    wait_until(failed_open, 10, what="fail open to v2")
    assert ro["stable"] == recorded_stable(fleet) == "v1"
    wait_until(lambda: edge.hosts("llama@v1") == {}, 5, what="v1 hosts gone from Envoy")
    with httpx.Client(base_url=edge.url, timeout=10) as c:
        served = {c.post("/v1/chat/completions", json=BODY).headers["x-replica"] for _ in range(20)}
    assert served <= {r.replica_id for r in green}, served
    assert metric(fleet, "aixds_serving_version_fallback", model="llama") == 1.0
    p = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--api", fleet.api],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "FAIL-OPEN: stable v1 has no serving replica; traffic goes to v2" in p.stdout, p.stdout
    # blue serves again: its traffic comes back
    for r in blue:
        assert r.server.popen is not None
        r.server.popen.wait(5)
        r.server.start()
    wait_until(
        lambda: api(fleet, "GET", "/v1/rollouts/llama")["traffic"] == {"v1": 100.0},
        15,
        what="traffic back on v1",
    )
    wait_until(
        lambda: metric(fleet, "aixds_serving_version_fallback", model="llama") == 0.0,
        5,
        what="fallback gauge back to 0",
    )
    assert fleet.serve_proc is not None
    log_text = fleet.serve_proc.log.read_text()
    assert "serving version of llama recorded at first sight: v1" in log_text
    assert "FAIL OPEN: llama's stable version v1 has no serving replica" in log_text
    assert "fail open of llama ended: its stable version v1 serves" in log_text
