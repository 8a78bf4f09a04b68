"""The documented Redis ACL (docs/redis-users.acl) against a real redis-server and a real
``aixds agent``: the agent publishes its replica and loads what its desired key asks for
without a single command refused, and with the same user another node's keys, the intent
and its own desired key are refused (NOPERM).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError

from controlplane.fleet import schema
from tests.support import Procs, RedisServer, free_port, wait_port, wait_until

ACL_FILE = Path(__file__).resolve().parents[2] / "docs" / "redis-users.acl"
ADMIN = ("test-admin", "admin-pw")
"""A user only this test has, to read ACL LOG (the documented file has none)."""


def acl_url(port: int, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{port}/0"


def start_acl_redis(tmp: Path, *args: str) -> RedisServer:
    """redis-server with the documented users plus ``test-admin``."""
    acl = tmp / "users.acl"
    acl.write_text(ACL_FILE.read_text() + f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all\n")
    srv = RedisServer(tmp, ("--aclfile", str(acl), *args))
    srv.start()
    return srv


def client(port: int, user: str, password: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, username=user, password=password, decode_responses=True
    )


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    srv = start_acl_redis(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def denied(admin: redis.Redis) -> list[dict[str, Any]]:
    return list(admin.acl_log())


def dryrun(admin: redis.Redis, user: str, *command: str) -> str:
    """``ACL DRYRUN``: "OK", or why ``user`` may not run ``command``."""
    return str(admin.execute_command("ACL", "DRYRUN", user, *command))  # type: ignore[no-untyped-call]


def test_agent_writes_only_its_own_node(procs: Procs, acl_redis: RedisServer) -> None:
    port = free_port()
    procs.aixds(
        "llm",
        "fake-llm",
        "--listen",
        f"127.0.0.1:{port}",
        "--model",
        "llama",
        "--replica-id",
        f"gpu-1/vllm-{port}",
        "--available",
        "qwen",
    )
    wait_port(port)
    procs.aixds(
        "agent",
        "agent",
        "--redis",
        acl_url(acl_redis.port, "agent-gpu-1", "CHANGE-ME-gpu-1"),
        "--node",
        "gpu-1",
        "--region",
        "us",
        "--zone",
        "us-a",
        "--server",
        f"vllm=http://127.0.0.1:{port}",
        "--interval",
        "0.5",
        "--ttl",
        "2",
        "--gpu",
        "none",
    )
    cp = client(acl_redis.port, "aixds-cp", "CHANGE-ME-cp")
    admin = client(acl_redis.port, *ADMIN)
    key = schema.replica_key(f"gpu-1/vllm-{port}")

    def record() -> dict[str, Any]:
        raw = cp.hget(key, schema.RECORD_FIELD)
        return json.loads(raw) if raw else {}

    wait_until(lambda: bool(record()), 15, what="the agent's record")
    # It reads its desired models: the control plane asks for qwen, the agent loads it.
    cp.hset(schema.desired_key("gpu-1"), "qwen", json.dumps({"state": "loaded"}))

    def models() -> set[str]:
        """Models on the replica: loading, warming or ready."""
        return {m["name"] for m in record().get("models", [])}

    assert models() == {"llama"}
    wait_until(lambda: "qwen" in models(), 15, what="qwen loading on gpu-1")
    assert denied(admin) == [], "the documented ACL refused a command the agent needs"
    assert cp.ttl(key) > 0

    agent = client(acl_redis.port, "agent-gpu-1", "CHANGE-ME-gpu-1")
    agent.hset(key, "probe", "1")  # its own record: allowed
    refused: list[Callable[[], object]] = [
        lambda: agent.hset(schema.replica_key("gpu-2/vllm-1"), schema.RECORD_FIELD, "{}"),
        lambda: agent.delete(schema.replica_key("gpu-2/vllm-1")),
        lambda: agent.set("aixds:v1:agent-lock:gpu-2", "me"),
        lambda: agent.hgetall(schema.desired_key("gpu-2")),
        lambda: agent.hset(schema.desired_key("gpu-1"), "llama", "{}"),
        lambda: agent.hset(schema.INTENT_KEY, "doc", "{}"),
        lambda: agent.publish(schema.INTENT_EVENTS_CHANNEL, "1"),
        lambda: agent.get(schema.fault_clear_key("gpu-2")),
        lambda: agent.flushall(),
    ]
    for i, call in enumerate(refused):
        with pytest.raises(NoPermissionError):
            call()
        assert sum(int(e["count"]) for e in denied(admin)) == i + 1, f"refusal {i} not logged"
    assert cp.hgetall(schema.desired_key("gpu-1")) == {"qwen": json.dumps({"state": "loaded"})}
    assert not cp.exists(schema.replica_key("gpu-2/vllm-1"))
    assert {e["username"] for e in denied(admin)} == {"agent-gpu-1"}
    # The control plane's user may do what serve needs (INFO for intent replication), not more.
    assert dryrun(admin, "aixds-cp", "INFO", "replication") == "OK"
    assert "no permissions" in dryrun(admin, "aixds-cp", "FLUSHALL")
    assert "no permissions" in dryrun(admin, "aixds-cp", "GET", "other:key")
