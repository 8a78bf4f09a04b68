"""Cold start end to end on one node: the agent (in-process, with a real redis-server) and
the project's fake vLLM server with models on demand and sleep mode.

The record carries the node's host memory for sleeping weights (``--host-memory``). A
desired entry without ``path`` for an available model loads it (published loading ->
warming -> ready, ``available[].load_s`` the measured load); desired ``sleeping`` drains
and sleeps the server (record ``sleeping``, GPU memory down); desired ``loaded`` wakes it
within the wake time (published warming, then ready).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
import pytest
import redis

from controlplane.fleet import schema
from controlplane.fleet.model import ModelState, ReplicaRecord
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from controlplane.sim.residency import parse_available
from controlplane.sim.simgpu import GiB, GpuSpec
from tests.integration.test_agent_node import EXEC, config, node_agent, records
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration

LOAD_S, WAKE_S = 0.6, 0.25
TIMING = replace(EXEC, wake_warmup_s=0.4, settle_s=0.3)


async def gpu_used_gib(url: str) -> float:
    async with httpx.AsyncClient() as c:
        (g,) = (await c.get(url + "/sim/gpu")).json()["gpus"]
        return float(g["memory_used_bytes"]) / GiB


async def test_load_on_demand_sleep_and_wake(redis_srv: RedisServer) -> None:
    cfg = FakeLLMConfig(
        models=("base",),
        version="v1",
        gpu=GpuSpec(mem_total_bytes=80 * GiB, weights_bytes=16 * GiB),
        available=parse_available(f"qwen:10:{LOAD_S * 1000:g}"),
        sleep_mode=True,
        wake_ms=WAKE_S * 1000,
    )
    async with FakeLLMServer(cfg) as fake:
        rid, server = f"n1/vllm-{fake.port}", f"vllm-{fake.port}"
        r = redis.Redis.from_url(redis_srv.url, decode_responses=True)
        key = schema.desired_key("n1")
        seen: list[tuple[ModelState | None, bool]] = []

        async def rec() -> ReplicaRecord | None:
            got = (await records(redis_srv.url, rid)).get(rid)
            if got is not None:
                m = next((m.state for m in got.models if m.name == "qwen"), None)
                seen.append((m, got.sleeping))
            return got

        async def state_is(state: ModelState, sleeping: bool) -> bool:
            got = await rec()
            return got is not None and seen[-1] == (state, sleeping)

        agent_cfg = replace(
            config(servers=(f"vllm={fake.url}",)), exec_timing=TIMING, host_mem_bytes=96 * GiB
        )
        async with node_agent(redis_srv.url, agent_cfg) as task:
            await eventually(lambda: _has_available(rec))
            r.hset(key, "qwen", json.dumps({"server": server}))  # no path: by name
            await eventually(lambda: state_is(ModelState.READY, False), within=5)
            states = [s for s, _ in seen]
            assert ModelState.LOADING in states and ModelState.WARMING in states
            assert states.index(ModelState.LOADING) < states.index(ModelState.WARMING)
            got = await rec()
            assert got is not None
            (avail,) = [a for a in got.available if a.name == "qwen"]
            assert avail.name == "qwen" and avail.mem_bytes == 10 * GiB
            assert got.host_mem_bytes == 96 * GiB  # --host-memory, for placement
            assert LOAD_S - 0.05 <= avail.load_s <= LOAD_S + 0.4  # measured, not the 0.6 hint
            assert await gpu_used_gib(fake.url) == pytest.approx(26, abs=0.01)

            r.hset(key, "qwen", json.dumps({"server": server, "state": "sleeping"}))
            # the base model is not managed and may be serving: the server stays awake
            await asyncio.sleep(TIMING.sync_s * 2 + 0.5)
            async with httpx.AsyncClient() as c:
                assert (await c.get(fake.url + "/is_sleeping")).json()["is_sleeping"] is False
            asleep = json.dumps({"server": server, "state": "sleeping"})
            r.hset(key, mapping={"qwen": asleep, "base": asleep})
            await eventually(lambda: state_is(ModelState.SLEEPING, True), within=5)
            await eventually(lambda: _gpu_below(fake.url, 1.0), within=5)
            async with httpx.AsyncClient() as c:
                assert (await c.get(fake.url + "/is_sleeping")).json()["is_sleeping"] is True

            t = time.monotonic()
            r.hset(key, "qwen", json.dumps({"server": server}))
            await eventually(lambda: _gpu_below(fake.url, 30.0, above=25.0), within=5)
            woke = time.monotonic() - t
            assert woke < WAKE_S + 1.0  # sync tick + wake time
            await eventually(lambda: state_is(ModelState.WARMING, False), within=3)
            await eventually(lambda: state_is(ModelState.READY, False), within=3)
            got = await rec()
            assert got is not None and got.available[0].wake_s == pytest.approx(WAKE_S, abs=0.2)
            assert not task.done()


async def _has_available(rec: object) -> bool:
    got = await rec()  # type: ignore[operator]
    # a server with sleep mode offers its base model too (it can sleep and wake)
    return got is not None and [a.name for a in got.available] == ["base", "qwen"]


async def _gpu_below(url: str, gib: float, above: float = -1.0) -> bool:
    used = await gpu_used_gib(url)
    return above < used < gib
