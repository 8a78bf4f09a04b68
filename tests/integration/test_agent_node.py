"""The whole node agent with a real redis-server: lock, executor, discovery, own keys only.

The agent runs in-process (``run_agent`` with a Redis client: lock and executor on)
against the project's fake LLM server (started without ``--runtime-lora``, so a LoRA load
on it fails as on a vLLM without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), ``FakeLoraServer``
(a vLLM with the runtime LoRA API) and ``FakeDockerEngine`` (recorded Engine API
responses served to the real Docker SDK). The CLI tests check exit code 3 and --takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import redis

from controlplane.agent.gpus.source import NoGpu
from controlplane.agent.lock import LockHeld, lock_key
from controlplane.agent.main import AgentConfig, parse_server, run_agent
from controlplane.agent.placement.converge import ExecTiming
from controlplane.agent.publisher import Timing
from controlplane.agent.servers.docker_source import DockerSource
from controlplane.fleet import schema
from controlplane.fleet.model import ModelInfo, ModelState, ReplicaRecord
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.fleet.store import decode_entry
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from tests.support import Procs, RedisServer, eventually, free_port, wait_until
from tests.unit.fake_docker import FakeDockerEngine
from tests.unit.fake_lora import FakeLoraServer

pytestmark = pytest.mark.integration

FAST = Timing(interval_s=0.3, ttl_s=1.5, poll_interval_s=0.03)
EXEC = ExecTiming(
    sync_s=0.05, warmup_s=0.4, drain_s=0.2, appear_s=3, backoff_min_s=0.2, backoff_max_s=1, jitter=0
)


def config(node: str = "n1", servers: tuple[str, ...] = (), **kw: Any) -> AgentConfig:
    return AgentConfig(
        redis_url="unused",
        node=node,
        region="eu",
        zone="eu-1",
        servers=tuple(replace(parse_server(s), address="127.0.0.1") for s in servers),
        timing=FAST,
        exec_timing=EXEC,
        lock_ttl_s=1.5,
        **kw,
    )


@contextlib.asynccontextmanager
async def node_agent(
    redis_url: str, cfg: AgentConfig, docker_src: DockerSource | None = None
) -> AsyncIterator[asyncio.Task[int]]:
    client = connect(redis_url)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_agent(cfg, RedisRegistry(client), NoGpu(), stop, redis=client, docker=docker_src)
    )
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await client.aclose()


async def records(url: str, only: str | None = None) -> dict[str, ReplicaRecord]:
    reg = RedisRegistry(connect(url))
    try:
        entries = await (reg.read_all() if only is None else reg.read([only]))
        return {e.replica_id: decode_entry(e) for e in entries if e.raw is not None}
    finally:
        await reg.client.aclose()


def models_of(recs: dict[str, ReplicaRecord], rid: str) -> tuple[ModelInfo, ...] | None:
    rec = recs.get(rid)
    return None if rec is None else rec.models


# -- the node lock ---------------------------------------------------------------------------
async def test_second_agent_is_refused_and_takeover_stops_the_first(redis_srv: RedisServer) -> None:
    async with FakeLLMServer(FakeLLMConfig(models=("m",), version="v1")) as srv:
        cfg = config(servers=(f"vllm={srv.url}",))
        rid = f"n1/vllm-{srv.port}"
        r = redis.Redis.from_url(redis_srv.url, decode_responses=True)
        async with node_agent(redis_srv.url, cfg) as first:
            await eventually(lambda: _has(redis_srv.url, rid))
            holder = r.get(lock_key("n1"))
            assert holder and 0 < r.pttl(lock_key("n1")) <= 1500
            async with node_agent(redis_srv.url, cfg) as second:
                with pytest.raises(LockHeld, match=r"holds aixds:v1:agent-lock:n1"):
                    await second
            assert not first.done()
            async with node_agent(redis_srv.url, replace(cfg, takeover=True)) as third:
                assert await asyncio.wait_for(first, 5) == 3  # lost its lock at the next refresh
                await asyncio.sleep(0.5)
                assert await _has(redis_srv.url, rid)  # the loser did not remove the records
                assert r.get(lock_key("n1")) not in (None, holder)
                assert not third.done()
        assert r.get(lock_key("n1")) is None  # released on a clean exit
        r.close()


async def _has(url: str, rid: str) -> bool:
    return rid in await records(url)


async def test_lock_and_record_come_back_after_a_redis_restart(redis_srv: RedisServer) -> None:
    async with FakeLLMServer(FakeLLMConfig(models=("m",))) as srv:
        rid = f"n1/vllm-{srv.port}"
        async with node_agent(redis_srv.url, config(servers=(f"vllm={srv.url}",))) as task:
            await eventually(lambda: _has(redis_srv.url, rid))
            redis_srv.stop()
            await asyncio.sleep(0.8)
            redis_srv.start()  # empty: no lock, no record
            await eventually(lambda: _has(redis_srv.url, rid), within=5)
            r = redis.Redis.from_url(redis_srv.url)
            wait_until(lambda: r.get(lock_key("n1")) is not None, 5, what="lock taken again")
            r.close()
            assert not task.done()
        assert task.result() == 0


# -- the executor through the desired key ----------------------------------------------------
async def test_executor_against_lora_server_and_fake_llm(redis_srv: RedisServer) -> None:
    with FakeLoraServer() as lora:
        async with FakeLLMServer(FakeLLMConfig(models=("m",), version="v1")) as fake:
            lora.load_delay_s = 0.4
            cfg = config(servers=(f"vllm={lora.url}", f"vllm={fake.url}"))
            lora_rid, fake_rid = f"n1/vllm-{lora.port}", f"n1/vllm-{fake.port}"
            r = redis.Redis.from_url(redis_srv.url, decode_responses=True)
            seen: list[ModelState | None] = []
            async with node_agent(redis_srv.url, cfg) as task:
                await eventually(lambda: _has(redis_srv.url, fake_rid))
                key = schema.desired_key("n1")
                r.hset(
                    key,
                    "sql",
                    json.dumps({"server": f"vllm-{lora.port}", "version": "v3", "path": "/a/sql"}),
                )
                r.hset(key, "m", json.dumps({"server": f"vllm-{fake.port}", "version": "blue"}))
                r.hset(
                    key, "other-lora", json.dumps({"server": f"vllm-{fake.port}", "path": "/a/x"})
                )

                async def sql_ready() -> bool:
                    recs = await records(redis_srv.url)
                    state = next(
                        (m.state for m in models_of(recs, lora_rid) or () if m.name == "sql"), None
                    )
                    if not seen or seen[-1] != state:
                        seen.append(state)
                    return state is ModelState.READY

                await eventually(sql_ready, within=6)
                assert seen[-3:] == [ModelState.LOADING, ModelState.WARMING, ModelState.READY]
                recs = await records(redis_srv.url)
                assert ModelInfo("sql", "v3", ModelState.READY) in (models_of(recs, lora_rid) or ())
                # The fake's own model is adopted (no call) and published with the desired version;
                # a LoRA on the fake (which has no LoRA API) fails, is not published, and backs off.
                assert models_of(recs, fake_rid) == (ModelInfo("m", "blue", ModelState.READY),)
                await asyncio.sleep(1.0)
                assert not task.done()
            r.close()
            assert [n for _, n in lora.load_calls] == ["sql"]


# -- Docker discovery, end to end ------------------------------------------------------------
async def test_docker_containers_come_and_go(redis_srv: RedisServer) -> None:
    async with FakeLLMServer(FakeLLMConfig(models=("m",))) as srv:
        with FakeDockerEngine() as engine:
            vllm = engine.containers["vllm-a"]
            vllm["NetworkSettings"]["Ports"]["8000/tcp"] = [
                {"HostIp": "127.0.0.1", "HostPort": str(srv.port)}
            ]
            engine.present = {"vllm-a", "sglang-c"}
            src = DockerSource(
                lambda: docker.DockerClient(base_url=engine.docker_url, timeout=5), "127.0.0.1"
            )
            cfg = config(docker=True, discover_interval_s=0.2)
            rid = f"n1/vllm-{srv.port}"
            want = (ModelInfo("m", "default", ModelState.READY),)
            try:
                async with node_agent(redis_srv.url, cfg, src):

                    async def state() -> tuple[set[str], tuple[ModelInfo, ...] | None]:
                        recs = await records(redis_srv.url)
                        return set(recs), models_of(recs, rid)

                    async def both() -> bool:
                        ids, models = await state()
                        return ids == {rid, "n1/sglang-30001"} and models == want

                    await eventually(both)
                    engine.present.discard("vllm-a")
                    await eventually(lambda: _gone(redis_srv.url, rid))
                    engine.present.add("vllm-a")
                    await eventually(both)
            finally:
                src.close()


async def _gone(url: str, rid: str) -> bool:
    return rid not in await records(url)


# -- only this node's keys -------------------------------------------------------------------
WRITES = {"SET", "HSET", "PEXPIRE", "DEL", "PUBLISH", "EVALSHA", "EVAL", "EXPIRE", "HDEL", "UNLINK"}


async def test_the_agent_touches_only_its_own_keys(redis_srv: RedisServer) -> None:
    r = redis.Redis.from_url(redis_srv.url, decode_responses=True)
    r.hset(schema.desired_key("n2"), "sql", json.dumps({"path": "/a"}))
    r.hset(schema.replica_key("n2/vllm-1"), "record", "{}")
    commands: list[list[str]] = []
    stop_monitor = threading.Event()

    def monitor() -> None:
        m = redis.Redis.from_url(redis_srv.url, decode_responses=True)
        with m.monitor() as mon:
            for cmd in mon.listen():
                parts = cmd["command"].split()
                commands.append([p.strip('"') for p in parts])
                if stop_monitor.is_set():
                    return

    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    await asyncio.sleep(0.2)
    with FakeLoraServer() as lora:
        cfg = config(servers=(f"vllm={lora.url}",))
        async with node_agent(redis_srv.url, cfg):
            r.hset(schema.desired_key("n1"), "sql", json.dumps({"path": "/a/sql"}))
            await eventually(lambda: _listed(redis_srv.url, f"n1/vllm-{lora.port}", "sql"))
    stop_monitor.set()
    r.ping()  # one more command, so the monitor loop sees the flag
    t.join(5)
    own = (
        schema.replica_key("n1/"),
        lock_key("n1"),
        schema.desired_key("n1"),
        schema.EVENTS_CHANNEL,
    )
    keyed = [
        c for c in commands if c and c[0].upper() in WRITES | {"HGETALL", "HLEN", "GET", "PTTL"}
    ]
    assert keyed, "MONITOR saw nothing"
    for c in keyed:
        name = c[0].upper()
        keys = c[3 : 3 + int(c[2])] if name in ("EVALSHA", "EVAL") else c[1:2]
        for k in keys:
            assert k.startswith(own), f"the agent touched {k!r}: {c}"
    assert r.exists(schema.replica_key("n2/vllm-1")) and r.exists(schema.desired_key("n2"))
    r.close()


async def _listed(url: str, rid: str, model: str) -> bool:
    return any(m.name == model for m in models_of(await records(url, rid), rid) or ())


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_config_file_lock_exit_3_and_takeover(
    procs: Procs, redis_srv: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    procs.aixds("fake-llm", "fake-llm", "--listen", f"127.0.0.1:{port}", "--model", "m")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, 15)
    conf = tmp_path / "agent.yaml"
    url = f"http://127.0.0.1:{port}"
    conf.write_text(
        f"servers:\n  - {{kind: vllm, url: '{url}', name: llama, versions: {{m: v5}}}}\n"
    )
    base = ["agent", "--redis", redis_srv.url, "--node", "gpu-9", "--region", "us",
            "--zone", "us-1", "--config", str(conf), "--interval", "0.3", "--ttl", "2",
            "--lock-ttl", "1.5"]  # fmt: skip
    first = procs.aixds("agent-1", *base)

    def published() -> bool:
        rec = asyncio.run(records(redis_srv.url)).get("gpu-9/llama")
        return rec is not None and rec.models == (ModelInfo("m", "v5", ModelState.READY),)

    wait_until(published, 15, what="record from the config file")
    res = subprocess.run(
        [sys.executable, "-m", "controlplane", *base], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 3, res.stderr
    assert "already has an agent" in res.stderr and "--takeover" in res.stderr
    second = procs.aixds("agent-2", *base, "--takeover")
    assert first.popen is not None
    first.popen.wait(10)
    assert first.popen.returncode == 3
    assert "lost aixds:v1:agent-lock:gpu-9" in first.log.read_text()
    wait_until(published, 5, what="record kept by the new agent")
    second.stop(timeout=10)
    assert second.popen is not None and second.popen.returncode == 0
    assert asyncio.run(records(redis_srv.url)) == {}
