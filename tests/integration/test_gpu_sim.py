"""``--gpu sim`` end to end: the fake server's GPU -> the agent's source -> the record.

An injected fault makes the replica ineligible, stays latched when the fault is gone from
the "hardware", and lifts when the operator's clear stamp appears in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from controlplane.agent.gpus.faults import FaultClearWatcher, fault_clear_key, format_clear_stamp
from controlplane.agent.gpus.poll import PolledGpuSource
from controlplane.agent.gpus.sim import SimGpuSource
from controlplane.agent.gpus.wiring import make_gpu_source
from controlplane.agent.publisher import ReplicaPublisher, Target, Timing
from controlplane.agent.servers.adapter import Probe
from controlplane.decide.eligibility import candidate
from controlplane.fleet.model import (
    LoadStats,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.fleet.store import decode_entry
from controlplane.intent import EMPTY_INTENT
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from tests.support import RedisServer, eventually

pytestmark = pytest.mark.integration

FAST = Timing(interval_s=0.2, ttl_s=1.0, poll_interval_s=0.05)


@contextlib.asynccontextmanager
async def fake() -> AsyncIterator[tuple[FakeLLMServer, httpx.AsyncClient]]:
    async with (
        FakeLLMServer(FakeLLMConfig(models=("m",), replica_id="r-1", tpot_ms=2)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=5.0) as client,
    ):
        yield srv, client


async def test_sim_source_reads_the_fake_servers_gpu() -> None:
    async with fake() as (_, c):
        src = SimGpuSource(str(c.base_url))
        try:
            (g,) = await asyncio.to_thread(src.read)
            (doc,) = (await c.get("/sim/gpu")).json()["gpus"]
            assert (g.uuid, g.mem_total_bytes, g.power_limit_w) == (
                doc["uuid"],
                doc["memory_total_bytes"],
                doc["power_limit_mw"] / 1000,
            )
            assert not g.faulty and not g.throttled

            await c.post("/control", json={"gpu_throttle": True, "gpu_fault": "xid 79"})
            (g,) = await asyncio.to_thread(src.read)
            assert g.throttled
            assert (g.faulty, g.fault_reason) == (True, "xid 79")

            await c.post("/control", json={"gpu_throttle": False, "gpu_fault": None})
            (g,) = await asyncio.to_thread(src.read)
            assert not g.throttled
            assert g.faulty  # latched: the fault is gone, the GPU stays out

            assert src.clear_faults(time.time()) == [g.uuid]
            (g,) = await asyncio.to_thread(src.read)
            assert not g.faulty
        finally:
            src.close()


async def test_make_gpu_source_sim_reads_in_the_background() -> None:
    async with fake() as (srv, c):
        src = make_gpu_source("sim", srv.url)
        assert isinstance(src, PolledGpuSource)
        try:
            # The HTTP reads happen in a thread: this loop (which serves the fake) is free.
            # Only the very first read waits (first_wait_s) for a first sample.
            async def has_gpu() -> bool:
                return len(src.read()) == 1

            await eventually(has_gpu)
            await c.post("/control", json={"gpu_fault": "remap"})

            async def faulty() -> bool:
                return src.read()[0].fault_reason == "remapped-row failure"

            await eventually(faulty)
        finally:
            src.close()


class ReadyAdapter:
    """A model server that is always up with one ready model (the GPU path is under test)."""

    kind = ServerKind.VLLM

    async def probe(self) -> Probe:
        return Probe(
            reachable=True,
            models=(ModelInfo("m", "v1", ModelState.READY),),
            load=LoadStats(running=1.0),
        )


async def test_gpu_fault_removes_the_replica_until_the_operator_clears_it(
    redis_srv: RedisServer,
) -> None:
    target = Target("n1/vllm-1", "n1", "eu", "eu-1", "127.0.0.1", 1, ServerKind.VLLM)
    client = connect(redis_srv.url)
    async with fake() as (srv, c):
        gpus = PolledGpuSource(SimGpuSource(srv.url), period_s=0.05, first_wait_s=0.0)
        watcher = FaultClearWatcher(client.get, "n1", [gpus], every_s=0.05)
        pub = ReplicaPublisher(target, ReadyAdapter(), gpus, RedisRegistry(client), FAST)

        async def clear_loop() -> None:  # stands in for the publisher's hook
            while True:
                await watcher.check()
                await asyncio.sleep(0.05)

        tasks = [
            asyncio.create_task(pub.probe_loop()),
            asyncio.create_task(pub.publish_loop()),
            asyncio.create_task(clear_loop()),
        ]

        async def record() -> ReplicaRecord | None:
            entries = await RedisRegistry(client).read([target.replica_id])
            return decode_entry(entries[0]) if entries[0].raw is not None else None

        async def eligible() -> bool | None:
            rec = await record()
            if rec is None or len(rec.gpus) != 1:
                return None
            obs = ObservedReplica(rec, expires_at=time.time() + 10)
            return candidate(obs, "m", "v1", EMPTY_INTENT, time.time()) is not None

        def is_(want: bool) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return await eligible() is want

            return check

        try:
            await eventually(is_(True))
            await c.post("/control", json={"gpu_fault": "xid 79"})
            t0 = time.monotonic()
            await eventually(is_(False), within=2.0)
            assert time.monotonic() - t0 < FAST.interval_s + 0.5  # within a publish beat
            rec = await record()
            assert rec is not None and rec.gpus[0].fault_reason == "xid 79"

            await c.post("/control", json={"gpu_fault": None})  # the hardware is fine again
            await asyncio.sleep(0.5)
            assert await eligible() is False  # still out: nobody cleared it

            await client.set(fault_clear_key("n1"), format_clear_stamp(time.time()))
            await eventually(is_(True), within=3.0)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gpus.close()
            await client.aclose()
