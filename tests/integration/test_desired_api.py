"""The desired-models API against a real redis-server: what it writes is what the agent reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from controlplane.fleet import schema
from controlplane.fleet.desired import Desired, parse_desired
from controlplane.fleet.model import ModelFailure, ModelState
from tests.fleetgen import replica
from tests.rollout_app import build
from tests.support import RedisServer

pytestmark = pytest.mark.integration

AUTH = {"authorization": "Bearer tok"}


@pytest.fixture
def api(redis_srv: RedisServer) -> Iterator[TestClient]:
    lora = (("base", "v1", ModelState.READY), ("sql-lora", "v2", ModelState.LOADING))
    failing = replace(
        replica("gpu-b/vllm-8001", port=8001).record,
        failures=(ModelFailure("sql-lora", "v2", "load", "HTTP 500: no GPU memory", 2),),
    )
    fleet = {
        "gpu-a/vllm-8000": replica("gpu-a/vllm-8000", models=lora, expires_at=1e12),
        "gpu-b/vllm-8001": replace(replica("gpu-b/vllm-8001"), record=failing, expires_at=1e12),
    }
    client = aioredis.Redis.from_url(redis_srv.url)
    with TestClient(build(fleet=fleet, redis=client).app, raise_server_exceptions=False) as c:
        yield c


def stored(redis_srv: RedisServer, node: str) -> dict[str, str]:
    r = redis.Redis.from_url(redis_srv.url, decode_responses=True)
    try:
        return dict(r.hgetall(schema.desired_key(node)))
    finally:
        r.close()


def test_put_writes_what_the_agent_parses_and_get_shows_the_node(
    api: TestClient, redis_srv: RedisServer
) -> None:
    body = {"server": "vllm-8000", "path": "/adapters/sql", "version": "v2"}
    r = api.put("/v1/nodes/gpu-a/models/sql-lora", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["observed"] == [
        {"replica": "gpu-a/vllm-8000", "version": "v2", "state": "loading"}
    ]
    raw = stored(redis_srv, "gpu-a")
    assert parse_desired("sql-lora", raw["sql-lora"]) == Desired(
        model="sql-lora", server="vllm-8000", version="v2", path="/adapters/sql"
    )
    r = api.put(
        "/v1/nodes/gpu-a/models/sql-lora",
        json={"server": "vllm-8000", "state": "unloaded"},
        headers=AUTH,
    )
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert json.loads(stored(redis_srv, "gpu-a")["sql-lora"]) == {
        "server": "vllm-8000",
        "state": "unloaded",
    }
    listed = api.get("/v1/nodes/gpu-a/models").json()
    assert [(m["model"], m["state"]) for m in listed["models"]] == [("sql-lora", "unloaded")]
    r = api.delete("/v1/nodes/gpu-a/models/sql-lora", headers=AUTH)
    assert r.json() == {"node": "gpu-a", "model": "sql-lora", "removed": True}
    assert stored(redis_srv, "gpu-a") == {}
    assert api.delete("/v1/nodes/gpu-a/models/sql-lora", headers=AUTH).json()["removed"] is False


def test_failures_and_hand_written_entries_are_shown(
    api: TestClient, redis_srv: RedisServer
) -> None:
    assert api.put("/v1/nodes/gpu-b/models/sql-lora", json={}, headers=AUTH).status_code == 200
    r = redis.Redis.from_url(redis_srv.url)
    try:
        r.hset(schema.desired_key("gpu-b"), "typo", '{"stat": "loaded"}')
    finally:
        r.close()
    models = {m["model"]: m for m in api.get("/v1/nodes/gpu-b/models").json()["models"]}
    assert models["sql-lora"]["failures"] == [
        {
            "replica": "gpu-b/vllm-8001",
            "op": "load",
            "error": "HTTP 500: no GPU memory",
            "failures": 2,
            "permanent": False,
        }
    ]
    assert "unknown key(s) ['stat']" in models["typo"]["error"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/v1/nodes/gpu-a/models/m", {}, {}, 401, "unauthorized"),
        ("/v1/nodes/nope/models/m", {}, AUTH, 404, "unknown_node"),
        ("/v1/nodes/gpu-a/models/m", {"server": "vllm-9"}, AUTH, 404, "unknown_server"),
        ("/v1/nodes/gpu-a/models/m", {"state": "gone"}, AUTH, 422, None),
        ("/v1/nodes/gpu-a/models/m", {"keep_alive": "soon"}, AUTH, 422, "invalid_desired"),
        ("/v1/nodes/gpu-a/models/m", {"colour": "red"}, AUTH, 422, None),
    ],
)
def test_bad_writes_are_refused_and_write_nothing(
    api: TestClient,
    redis_srv: RedisServer,
    path: str,
    body: object,
    headers: dict[str, str],
    status: int,
    error: str | None,
) -> None:
    r = api.put(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    if error is not None:
        assert r.json()["error"] == error
    assert stored(redis_srv, "gpu-a") == {} and stored(redis_srv, "nope") == {}


def test_redis_down_is_a_503(api: TestClient, redis_srv: RedisServer) -> None:
    redis_srv.stop()
    r = api.put("/v1/nodes/gpu-a/models/m", json={}, headers=AUTH)
    assert r.status_code == 503 and r.json()["error"] == "redis_unreachable", r.text
    r = api.get("/v1/nodes/gpu-a/models")
    assert r.status_code == 503, r.text


def test_a_node_of_another_region_gets_its_keys_in_that_regions_registry(
    redis_srv: RedisServer,
) -> None:
    """With a registry per region, a node's agent reads its desired models (and GPU-fault
    clears) from its own region's Redis: the API writes them there, not to its own."""
    eu_url = redis_srv.url.rsplit("/", 1)[0] + "/1"
    fleet = {
        "gpu-us/vllm-8000": replica("gpu-us/vllm-8000", expires_at=1e12),
        "gpu-eu/vllm-8000": replica("gpu-eu/vllm-8000", region="eu", expires_at=1e12),
    }
    local = aioredis.Redis.from_url(redis_srv.url)
    eu = aioredis.Redis.from_url(eu_url)
    app = build(fleet=fleet, redis=local, region_redis={"eu": eu}).app
    eu_sync = redis.Redis.from_url(eu_url, decode_responses=True)
    try:
        with TestClient(app, raise_server_exceptions=False) as api:
            for node in ("gpu-us", "gpu-eu"):
                r = api.put(f"/v1/nodes/{node}/models/llama", json={}, headers=AUTH)
                assert r.status_code == 200, r.text
            assert set(stored(redis_srv, "gpu-us")) == {"llama"}
            assert stored(redis_srv, "gpu-eu") == {}
            assert set(eu_sync.hgetall(schema.desired_key("gpu-eu"))) == {"llama"}
            listed = api.get("/v1/nodes/gpu-eu/models").json()["models"]
            assert [m["model"] for m in listed] == ["llama"]
            r = api.post("/v1/nodes/gpu-eu/gpu-faults/clear", headers=AUTH)
            assert r.status_code == 200, r.text
            assert eu_sync.exists(schema.fault_clear_key("gpu-eu"))
            r = api.delete("/v1/nodes/gpu-eu/models/llama", headers=AUTH)
            assert r.json()["removed"] is True
            assert eu_sync.hgetall(schema.desired_key("gpu-eu")) == {}
    finally:
        eu_sync.flushdb()
        eu_sync.close()
