"""Cold start end to end: a request for a model that is being loaded waits in the
activator and is then served through Envoy; past the bound it gets 503 + Retry-After.

Real parts: ``aixds serve`` with ``--activator``, a real Envoy edge, real Redis, the agent
and the fake vLLM server (its runtime LoRA API loads the model slowly).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.proxy.runner import envoy_binary
from tests.e2e.fleet import AGENT_INTERVAL_S, AGENT_TTL_S, Edge, Fleet, Replica, chat
from tests.e2e.test_model_loading import TOKEN, desire, models_cli
from tests.support import Procs, RedisServer, free_port, wait_port, wait_until

pytestmark = pytest.mark.e2e

MODEL = "sql-lora"
WAIT_S = 20.0


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve("--api-token", TOKEN, *f.activator_args(), "--hold", "4")
    yield f


def slow_lora(fleet: Fleet, load_ms: int) -> Replica:
    return fleet.add_replica(
        "llama",
        "v1",
        server_args=("--runtime-lora", "--lora-load-ms", str(load_ms)),
        agent_args=("--warmup", "1", "--drain", "1"),
    )


def cold_route(edge: Edge, model: str = MODEL) -> bool:
    """Envoy routes ``model`` to the activator."""
    dump = edge.admin_json("/config_dump?resource=dynamic_route_configs")
    return f'"{model}/body/cold"' in json.dumps(dump)


def activator_metric(fleet: Fleet, model: str, outcome: str) -> float:
    text = httpx.get(f"{fleet.api}/metrics", timeout=3).text
    key = f'aixds_activator_requests_total{{model="{model}",outcome="{outcome}"}} '
    line = next((x for x in text.splitlines() if x.startswith(key)), "")
    return float(line.split()[-1]) if line else 0.0


def test_a_request_for_a_loading_model_waits_and_is_served_through_envoy(fleet: Fleet) -> None:
    rep = slow_lora(fleet, load_ms=2500)
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    assert chat(edge.url, MODEL).status_code == 404  # nobody has it, nobody loads it

    desire(fleet, rep, {"server": f"vllm-{rep.port}", "path": "/adapters/sql", "version": "v1"})
    wait_until(lambda: cold_route(edge), WAIT_S, what="the activator route")
    results: list[httpx.Response] = []

    def send(header: bool) -> None:
        results.append(chat(edge.url, MODEL, header=header, timeout=30))

    started = time.monotonic()
    threads = [threading.Thread(target=send, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    took = time.monotonic() - started
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
    assert all(r.headers["x-replica"] == rep.replica_id for r in results)
    by_body = [r for r in results if r.request.headers.get("x-model") is None]
    assert len(by_body) == 3 and all(r.json()["model"] == MODEL for r in by_body)
    waited = [int(r.headers["x-aixds-waited-ms"]) for r in results]
    assert min(waited) > 200, waited  # they were held, not bounced
    assert took < 2.5 + 1 + 5, took  # load + warm-up + slack, not the 4 s hold bound twice
    assert activator_metric(fleet, MODEL, "served") == 6

    # Once served, the model's own route takes over: nothing passes through Python.
    wait_until(lambda: not cold_route(edge), WAIT_S, what="the model's own route")
    r = chat(edge.url, MODEL)
    assert r.status_code == 200 and "x-aixds-waited-ms" not in r.headers
    assert activator_metric(fleet, MODEL, "served") == 6
    assert activator_metric(fleet, "llama", "served") == 0


def test_past_the_hold_bound_a_clear_503_with_retry_after(fleet: Fleet) -> None:
    rep = slow_lora(fleet, load_ms=30_000)
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    desire(fleet, rep, {"server": f"vllm-{rep.port}", "path": "/adapters/sql", "version": "v1"})
    wait_until(lambda: cold_route(edge), WAIT_S, what="the activator route")
    started = time.monotonic()
    r = chat(edge.url, MODEL, timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "10"
    assert "loading" in r.json()["error"]["message"]
    assert 3.5 < took < 8, took
    assert activator_metric(fleet, MODEL, "timeout") == 1
    # a client cannot point the activator elsewhere: Envoy overwrites the return header
    r = httpx.post(
        f"{edge.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-aixds-return": "10.9.9.9:1"},
        timeout=30,
    )
    assert r.status_code == 503 and activator_metric(fleet, MODEL, "failed") == 0


# -- placement: load on demand, sleep when idle, wake on the next request, pins ----------

COLD = "qwen"


@pytest.fixture
def placing(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve(
        "--api-token",
        TOKEN,
        *f.activator_args(),
        "--hold",
        "30",
        "--keep-alive",
        "2",
        "--scale-down-after",
        "2",
        "--placement-hold",
        "1",
        "--unload-after",
        "60",
    )
    yield f


def placement(fleet: Fleet) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{fleet.api}/v1/placement", timeout=3).json()
    return doc


def model_state(fleet: Fleet, rep: Replica, model: str) -> str | None:
    replicas = httpx.get(f"{fleet.api}/v1/fleet", timeout=3).json()["replicas"]
    rec = next((x for x in replicas if x["replica_id"] == rep.replica_id), {})
    return next((m["state"] for m in rec.get("models", ()) if m["name"] == model), None)


def test_a_model_loaded_nowhere_is_placed_on_demand_slept_when_idle_and_woken(
    placing: Fleet,
) -> None:
    fleet = placing
    rep = fleet.add_replica(
        "llama",
        "v1",
        server_args=("--available", f"{COLD}:20:3000", "--enable-sleep-mode", "--wake-ms", "300"),
        agent_args=("--warmup", "1", "--drain", "1"),
    )
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)

    # 1. Loaded nowhere: the request waits while placement loads it, then is served.
    started = time.monotonic()
    r = chat(edge.url, COLD, timeout=40)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.headers["x-replica"] == rep.replica_id and r.json()["model"] == COLD
    assert int(r.headers["x-aixds-waited-ms"]) >= 2500  # the 3 s load, not a bounce
    assert took < 3 + 6, took  # load + warm-up + placement tick + slack
    decision = placement(fleet)["decision"]["models"][COLD]
    assert decision["awake"] == [rep.replica_id], decision
    status = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--api", fleet.api],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert f"  {COLD}: 1 awake, 0 asleep" in status, status
    assert "forecast:" in status, status
    assert f"  {rep.replica_id.split('/')[0]}: GPU " in status, status  # memory per node

    # 2. Idle past the keep-alive and the scale-down: the server sleeps (its base model is
    # idle too); the next request wakes it, far faster than a load.
    wait_until(lambda: model_state(fleet, rep, COLD) == "sleeping", 30, what=f"{COLD} asleep")
    wait_until(  # published sleeping from the drain on; asleep once drained
        lambda: httpx.get(f"{rep.url}/is_sleeping", timeout=3).json()["is_sleeping"],
        10,
        what="the server asleep",
    )
    started = time.monotonic()
    r = chat(edge.url, COLD, timeout=40)
    woke_in = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert woke_in < 3.0, woke_in  # a wake (0.3 s) + warm-up, not the 3 s load again

    # 3. Pinned: stays awake however idle.
    out = models_cli(fleet, "pin", COLD, "--min", "1")
    assert f"{COLD}: pinned 1 in every region" in out, out
    time.sleep(2 + 2 + 3)
    assert model_state(fleet, rep, COLD) in ("ready", "warming")
    assert "pinned" in " ".join(placement(fleet)["decision"]["models"][COLD]["reasons"])
    models_cli(fleet, "unpin", COLD)
    assert placement(fleet)["pinned"] == []


def test_two_servers_on_one_gpu_take_turns_and_never_both_hold_it(placing: Fleet) -> None:
    """One vLLM per model on one 80 GB GPU (same GPU uuid), 40 GB of weights each: not both
    awake (72 GB usable). Placement puts one to sleep (its weights go to host memory, not
    unloaded); a request for it is held while the other sleeps and it wakes; the agent
    wakes it only once the other is asleep (sampled every 20 ms: never both awake)."""
    fleet = placing
    shared = ("--enable-sleep-mode", "--wake-ms", "300", "--weights-gib", "40")
    shared += ("--gpu-mem-gib", "80", "--gpu-uuid", "GPU-e2e-shared")
    reps = {
        m: fleet.add_replica(m, "v1", node="gpu-1", agent=False, server_args=shared)
        for m in ("alpha", "beta")
    }
    fleet.procs.aixds(
        "agent-gpu-1",
        "agent",
        "--redis", fleet.registry_url, "--node", "gpu-1", "--region", "us", "--zone", "us-a",
        "--server", f"vllm={reps['alpha'].url}", "--server", f"vllm={reps['beta'].url}",
        "--interval", str(AGENT_INTERVAL_S), "--ttl", str(AGENT_TTL_S), "--gpu", "sim",
        "--warmup", "1", "--drain", "1",
    )  # fmt: skip
    edge = fleet.add_edge()

    def asleep(m: str) -> bool:
        doc = httpx.get(f"{reps[m].url}/is_sleeping", timeout=3).json()
        return bool(doc["is_sleeping"])

    wait_until(lambda: asleep("alpha") != asleep("beta"), 30, what="one of the two asleep")
    samples: list[tuple[bool, bool]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((asleep("alpha"), asleep("beta")))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        first = "alpha" if asleep("alpha") else "beta"
        other = "beta" if first == "alpha" else "alpha"
        # the sleeping one asked for: held while the other drains and sleeps, then woken
        wait_until(lambda: cold_route(edge, first), WAIT_S, what=f"{first} to the activator")
        started = time.monotonic()
        r = chat(edge.url, first, timeout=40)
        assert r.status_code == 200, r.text
        assert r.headers["x-replica"] == reps[first].replica_id
        assert int(r.headers.get("x-aixds-waited-ms", "0")) > 0
        assert time.monotonic() - started < 20  # drain 1 s + wake 0.3 s + warm-up + ticks
        assert not asleep(first) and asleep(other)
        stop.wait(1.0)  # a few samples after the swap too
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert (False, False) not in samples, "both servers awake on the one GPU"
    # the sampler saw the swap itself (however slow it ran): first asleep, then awake
    before = (True, False) if first == "alpha" else (False, True)
    after = (before[1], before[0])
    assert before in samples and after in samples
    assert samples.index(before) < len(samples) - 1 - samples[::-1].index(after)
    state = placement(fleet)["decision"]["models"]
    assert state[first]["awake"] == [reps[first].replica_id]
    assert state[other]["sleeping"] == [reps[other].replica_id]  # asleep, not unloaded


def test_a_fallback_model_answers_at_once_while_the_model_loads(placing: Fleet) -> None:
    fleet = placing
    rep = fleet.add_replica(
        "llama",
        "v1",
        server_args=("--available", f"{COLD}:20:4000"),
        agent_args=("--warmup", "1", "--drain", "1"),
    )
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    out = models_cli(fleet, "pin", COLD, "--min", "0", "--fallback", "llama")
    assert "fallback llama" in out, out

    started = time.monotonic()
    r = chat(edge.url, COLD, timeout=40)
    assert time.monotonic() - started < 2.0  # not held for the 4 s load
    assert r.status_code == 200, r.text
    assert r.headers["x-aixds-fallback"] == "llama" and r.json()["model"] == "llama"
    assert activator_metric(fleet, COLD, "fallback") == 1

    # ...and the request counted as demand: the model gets loaded, then answers itself.
    wait_until(lambda: model_state(fleet, rep, COLD) == "ready", 30, what=f"{COLD} loaded")
    wait_until(
        lambda: "x-aixds-fallback" not in chat(edge.url, COLD).headers, 10, what="own answers"
    )
    r = chat(edge.url, COLD)
    assert r.status_code == 200 and r.json()["model"] == COLD


def test_envoy_does_not_retry_a_cluster_without_hosts(tmp_path: Path) -> None:
    """Why cold models go to an activator instead of an empty cluster with retries and
    backoff: measured on the Envoy here, a cluster without a healthy host is answered 503
    "no healthy upstream" at once, with no retry whatever the retry policy."""
    listen, admin = free_port(), free_port()
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    retry = {
        "retry_on": "5xx,connect-failure,refused-stream,reset,retriable-status-codes",
        "retriable_status_codes": [503],
        "num_retries": 20,
        "retry_back_off": {"base_interval": "0.5s", "max_interval": "2s"},
    }
    route = {"match": {"prefix": "/"}, "route": {"cluster": "empty", "retry_policy": retry}}
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": hcm + "HttpConnectionManager",
                                        "stat_prefix": "h",
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": router},
                                            }
                                        ],
                                        "route_config": {
                                            "virtual_hosts": [
                                                {"name": "v", "domains": ["*"], "routes": [route]}
                                            ]
                                        },
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "empty",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "empty", "endpoints": []},
                }
            ],
        },
    }
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(cfg))
    envoy = subprocess.Popen(
        [str(envoy_binary()), "-c", str(path), "--use-dynamic-base-id", "-l", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(admin, timeout=15)
        wait_port(listen, timeout=15)
        started = time.monotonic()
        r = httpx.get(f"http://127.0.0.1:{listen}/v1/models", timeout=30)
        took = time.monotonic() - started
        stats = httpx.get(f"http://127.0.0.1:{admin}/stats", timeout=3).text
    finally:
        envoy.terminate()
        envoy.wait(10)
    assert (r.status_code, r.text) == (503, "no healthy upstream")
    assert took < 0.5, took  # not 20 retries of >= 0.5 s backoff
    assert "cluster.empty.upstream_rq_retry: 0" in stats
    assert "cluster.empty.upstream_cx_none_healthy: 1" in stats
