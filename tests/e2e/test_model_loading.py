"""Loading and unloading end to end: the desired-models key in a real Redis, the agent's
executor calling the fake vLLM's runtime LoRA API, ``aixds serve`` and a real Envoy.

A LoRA adapter written into the node's desired key (through the config API and
``aixds models``) is loaded (``loading`` -> ``warming``
-> ``ready`` in the replica's record), becomes routable through the edge, and leaves the
routes again when the entry says ``unloaded``; failed loads show in the record's
``failures`` until a retry succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from controlplane.fleet import schema
from tests.e2e.fleet import Fleet, Load, Replica, chat
from tests.support import Procs, RedisServer, wait_until

pytestmark = pytest.mark.e2e

LORA = "sql-lora"
CLUSTER = f"{LORA}@v1"
TOKEN = "e2e-token"
WAIT_S = 20.0
"""Longest wait for one step: generous, for a loaded 2-core CI machine."""


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve("--api-token", TOKEN)
    yield f


def lora_replica(fleet: Fleet, load_ms: int, warmup_s: float) -> Replica:
    return fleet.add_replica(
        "llama",
        "v1",
        server_args=("--runtime-lora", "--lora-load-ms", str(load_ms)),
        agent_args=("--warmup", str(warmup_s), "--drain", "2"),
    )


def desire(fleet: Fleet, rep: Replica, entry: dict[str, str]) -> None:
    """Set ``LORA``'s entry of the replica's node through ``PUT /v1/nodes/{node}/models``."""
    r = httpx.put(
        f"{fleet.api}/v1/nodes/{rep.node}/models/{LORA}",
        json=entry,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    stored = redis.Redis.from_url(fleet.redis.url, decode_responses=True)
    try:  # what the agent will read
        assert json.loads(stored.hget(schema.desired_key(rep.node), LORA) or "{}") == entry
    finally:
        stored.close()


def models_cli(fleet: Fleet, *args: str) -> str:
    """Run ``aixds models ARGS`` against the fleet's API; its output."""
    p = subprocess.run(
        [sys.executable, "-m", "controlplane", "models", *args, "--api", fleet.api],
        env={**os.environ, "AIXDS_API_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def record(fleet: Fleet, rep: Replica) -> dict[str, Any]:
    """The replica's record as ``GET /v1/fleet`` shows it (``{}`` if it has none)."""
    replicas = httpx.get(f"{fleet.api}/v1/fleet", timeout=3).json()["replicas"]
    return next((x for x in replicas if x["replica_id"] == rep.replica_id), {})


def lora_state(rec: dict[str, Any]) -> str | None:
    return next((m["state"] for m in rec.get("models", ()) if m["name"] == LORA), None)


def lora_failure(rec: dict[str, Any]) -> dict[str, Any] | None:
    return next((f for f in rec.get("failures", ()) if f["name"] == LORA), None)


def fake_state(rep: Replica) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{rep.url}/control", timeout=3).json()
    return doc


def follow_states(fleet: Fleet, rep: Replica, until: str | None) -> list[str | None]:
    """Poll the record until ``LORA``'s state is ``until``; the states seen, in order."""
    seen: list[str | None] = []

    def reached() -> bool:
        state = lora_state(record(fleet, rep))
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == until

    try:
        wait_until(reached, WAIT_S, interval=0.05, what=f"{LORA} to be {until}")
    except TimeoutError as e:
        raise AssertionError(f"{e}; states seen: {seen}") from None
    return seen


def test_lora_loads_routes_and_unloads_through_the_desired_key(fleet: Fleet) -> None:
    rep = lora_replica(fleet, load_ms=1500, warmup_s=2)
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    assert chat(edge.url, LORA).status_code == 404  # not loaded anywhere yet

    desire(fleet, rep, {"server": f"vllm-{rep.port}", "path": "/adapters/sql", "version": "v1"})
    seen = follow_states(fleet, rep, until="ready")
    assert [s for s in seen if s is not None] == ["loading", "warming", "ready"], seen
    state = fake_state(rep)
    assert state["lora_adapters"] == {LORA: "/adapters/sql"}
    assert state["lora_load_calls"] == 1

    wait_until(lambda: chat(edge.url, LORA).status_code == 200, WAIT_S, what=f"{LORA} routable")
    listed = models_cli(fleet, "list", rep.node)
    want = f"{LORA} loaded on vllm-{rep.port} as v1: {rep.replica_id} v1 ready"
    assert want in listed, listed
    r = chat(edge.url, LORA)
    assert r.status_code == 200, r.text
    assert r.headers["x-replica"] == rep.replica_id
    assert r.json()["model"] == LORA
    assert CLUSTER in edge.dynamic_versions()

    # Unload while the base model takes traffic: it must not notice.
    with Load(edge.url, "llama", concurrency=4) as load:
        load.wait_requests(20, timeout=WAIT_S)
        models_cli(fleet, "unload", rep.node, LORA, "--server", f"vllm-{rep.port}")
        seen = follow_states(fleet, rep, until=None)
        wait_until(lambda: chat(edge.url, LORA).status_code == 404, WAIT_S, what=f"{LORA} unrouted")
        wait_until(
            lambda: CLUSTER not in edge.dynamic_versions(), WAIT_S, what=f"{CLUSTER} removed"
        )
        load.wait_requests(20, timeout=WAIT_S)
    assert "unloading" in seen, seen
    assert load.failed == 0, load.failures[:5]
    assert set(load.replicas) == {rep.replica_id}
    state = fake_state(rep)
    assert state["lora_adapters"] == {}
    assert state["lora_unload_calls"] == 1


def test_failed_loads_show_in_the_record_until_a_retry_succeeds(fleet: Fleet) -> None:
    rep = lora_replica(fleet, load_ms=200, warmup_s=1)
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    r = httpx.post(f"{rep.url}/control", json={"lora_fail_loads": 2}, timeout=3)
    assert r.status_code == 200, r.text

    desire(fleet, rep, {"server": f"vllm-{rep.port}", "path": "/adapters/sql", "version": "v1"})
    first: dict[str, Any] = {}

    def failed() -> bool:
        failure = lora_failure(record(fleet, rep))
        first.update(failure or {})
        return failure is not None

    wait_until(failed, WAIT_S, interval=0.05, what="the failed load in the record")
    # While it fails (the retry waits at least 0.9 s) the model is not routable.
    assert chat(edge.url, LORA).status_code == 404
    assert (first["op"], first["version"], first["permanent"]) == ("load", "v1", False)
    assert "HTTP 500" in first["error"] and "lora_fail_loads" in first["error"], first

    most = 0

    def recovered() -> bool:
        nonlocal most
        rec = record(fleet, rep)
        failure = lora_failure(rec)
        if failure is not None:
            most = max(most, failure["failures"])
        return failure is None and lora_state(rec) == "ready"

    wait_until(recovered, WAIT_S, interval=0.05, what=f"{LORA} loaded and its failure cleared")
    assert most == 2  # two failed attempts in a row, then the third load succeeded
    assert fake_state(rep)["lora_load_calls"] == 3
    wait_until(lambda: chat(edge.url, LORA).status_code == 200, WAIT_S, what=f"{LORA} routable")
    assert chat(edge.url, LORA).headers["x-replica"] == rep.replica_id
