"""The node agent against fake vLLM servers and a real redis-server.

Most tests run the agent in-process (``run_agent``) with short intervals; one runs the
``aixds agent`` command to check its flags, signals and clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.agent.gpus.source import NoGpu
from controlplane.agent.main import AgentConfig, parse_server, run_agent
from controlplane.agent.publisher import ReplicaPublisher, Target, Timing
from controlplane.agent.servers.adapter import Probe
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ReplicaRecord, ServerKind
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.fleet.store import MemoryRegistry, decode_entry
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from tests.support import Procs, RedisServer, eventually, free_port, wait_until

pytestmark = pytest.mark.integration

FAST = Timing(interval_s=0.3, ttl_s=1.0, poll_interval_s=0.05)


class Reader:
    """Reads records the way the control plane does."""

    def __init__(self, url: str) -> None:
        self.reg = RedisRegistry(connect(url))

    async def records(self) -> dict[str, ReplicaRecord]:
        return {e.replica_id: decode_entry(e) for e in await self.reg.read_all()}

    async def record(self, rid: str) -> ReplicaRecord | None:
        return (await self.records()).get(rid)


@contextlib.asynccontextmanager
async def reader(url: str) -> AsyncIterator[Reader]:
    r = Reader(url)
    try:
        yield r
    finally:
        await r.reg.client.aclose()


@contextlib.asynccontextmanager
async def agent(
    srv: FakeLLMServer,
    redis_url: str,
    timing: Timing = FAST,
    versions: dict[str, str] | None = None,
    reference_tps: float = 25.0,
) -> AsyncIterator[tuple[str, asyncio.Task[int]]]:
    """The agent in-process, publishing ``srv`` through its own Redis client."""
    cfg = AgentConfig(
        redis_url="unused", node="n1", region="eu", zone="eu-1",
        servers=(parse_server(f"vllm={srv.url}"),), timing=timing, versions=versions or {},
        reference_tps=reference_tps,
    )  # fmt: skip
    stop = asyncio.Event()
    writer = RedisRegistry(connect(redis_url))
    task = asyncio.create_task(run_agent(cfg, writer, NoGpu(), stop))
    try:
        yield f"n1/vllm-{srv.port}", task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await writer.client.aclose()


def fake(**kw: Any) -> FakeLLMServer:
    port = kw.pop("port", 0)
    return FakeLLMServer(FakeLLMConfig(models=("m",), version="v1", **kw), port=port)


async def test_record_ttl_event_and_removal_on_stop(redis_srv: RedisServer) -> None:
    async with reader(redis_srv.url) as rd, fake() as srv:
        heard: list[str] = []

        async def listen() -> None:
            async for rid in rd.reg.events():
                heard.append(rid)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)  # subscribed
        async with agent(srv, redis_srv.url) as (rid, task):
            await eventually(lambda: _has(rd, rid))
            assert rid in heard
            rec = await rd.record(rid)
            assert rec is not None
            assert (rec.node, rec.region, rec.zone) == ("n1", "eu", "eu-1")
            assert (rec.address, rec.port, rec.server_kind) == (
                "127.0.0.1",
                srv.port,
                ServerKind.VLLM,
            )
            assert rec.models == (ModelInfo("m", "v1", ModelState.READY),)
            assert rec.load == LoadStats()
            assert abs(rec.timestamp - time.time()) < 5
            (entry,) = await rd.reg.read_all()
            assert 0 < entry.ttl_s <= FAST.ttl_s
            # Heartbeats keep it alive well past its TTL.
            await asyncio.sleep(2 * FAST.ttl_s)
            assert await rd.record(rid) is not None
            assert heard.count(rid) >= 4
            assert not task.done()
        assert task.result() == 0
        assert await rd.records() == {}  # removed on clean shutdown, not left to expire
        listener.cancel()


async def _has(rd: Reader, rid: str) -> bool:
    return await rd.record(rid) is not None


async def test_load_change_is_published_before_the_heartbeat(redis_srv: RedisServer) -> None:
    slow = Timing(interval_s=10.0, ttl_s=30.0, poll_interval_s=0.05)
    async with (
        reader(redis_srv.url) as rd,
        fake(max_running=2, ttft_ms=20, tpot_ms=25) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10) as client,
        agent(srv, redis_srv.url, slow) as (rid, _),
    ):
        await eventually(lambda: _has(rd, rid))
        req = {"model": "m", "prompt": "hello", "max_tokens": 16}
        calls = [asyncio.create_task(client.post("/v1/completions", json=req)) for _ in range(6)]
        t0 = time.monotonic()

        async def busy() -> bool:
            rec = await rd.record(rid)
            return rec is not None and rec.load.running == 2 and rec.load.queue_waiting == 4

        await eventually(busy, within=2.0)
        assert time.monotonic() - t0 < 1.0  # on change, not on the 10 s heartbeat
        rec = await rd.record(rid)
        assert rec is not None and 0 < rec.load.kv_cache_usage < 1
        await asyncio.gather(*calls)


async def test_decode_speed_is_measured_and_follows_a_slowdown(redis_srv: RedisServer) -> None:
    # 20 ms per token at speed 1 and no batch slowdown: 50 tokens/s per sequence = speed 1.
    async with (
        reader(redis_srv.url) as rd,
        fake(max_running=4, ttft_ms=5, tpot_ms=20, batch_slowdown=0.0, speed=1.0) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=30) as client,
        agent(srv, redis_srv.url, reference_tps=50.0) as (rid, _),
    ):
        await eventually(lambda: _has(rd, rid))
        assert (await rd.record(rid)).speed == 1.0  # type: ignore[union-attr]  # not measured yet
        stop = asyncio.Event()

        async def keep_busy() -> None:
            req = {"model": "m", "prompt": "x", "max_tokens": 40}
            while not stop.is_set():
                await client.post("/v1/completions", json=req)

        busy = [asyncio.create_task(keep_busy()) for _ in range(4)]
        try:

            async def speed_is(lo: float, hi: float) -> bool:
                rec = await rd.record(rid)
                return rec is not None and lo <= rec.speed <= hi

            await eventually(lambda: speed_is(0.8, 1.25), within=8.0)
            r = await client.post("/control", json={"speed": 0.4})
            assert r.status_code == 200, r.text
            await eventually(lambda: speed_is(0.3, 0.52), within=10.0)
        finally:
            stop.set()
            await asyncio.gather(*busy)


async def test_model_server_down_then_back(redis_srv: RedisServer) -> None:
    async with reader(redis_srv.url) as rd:
        srv = fake()
        await srv.start()
        port = srv.port
        try:
            # A slow heartbeat: every change below must be published on its own.
            slow = Timing(interval_s=5.0, ttl_s=10.0, poll_interval_s=0.05)
            async with agent(srv, redis_srv.url, slow) as (rid, task):

                async def models_are(want: tuple[ModelInfo, ...]) -> bool:
                    rec = await rd.record(rid)
                    return rec is not None and rec.models == want

                ready = (ModelInfo("m", "v1", ModelState.READY),)
                await eventually(lambda: models_are(ready))
                await srv.stop()
                t0 = time.monotonic()
                await eventually(lambda: models_are(()), within=1.0)
                assert time.monotonic() - t0 < 1.0  # published at once, not left to expire
                # The server restarts on the same port, cold: loading, then ready.
                srv = fake(port=port, load_time_s=0.5)
                await srv.start()
                await eventually(lambda: models_are(ready), within=3.0)
                # A reload keeps the names it saw, marked loading.
                async with httpx.AsyncClient(base_url=srv.url) as c:
                    await c.post("/control", json={"load_time": 0.5})
                loading = (ModelInfo("m", "v1", ModelState.LOADING),)
                await eventually(lambda: models_are(loading), within=2.0)
                await eventually(lambda: models_are(ready), within=3.0)
                assert not task.done()
        finally:
            await srv.stop()


async def test_survives_redis_stop_and_start(redis_srv: RedisServer) -> None:
    async with fake() as srv:
        async with agent(srv, redis_srv.url) as (rid, task):
            async with reader(redis_srv.url) as rd:
                await eventually(lambda: _has(rd, rid))
            redis_srv.stop()
            await asyncio.sleep(1.0)  # several failed publishes
            assert not task.done()
            redis_srv.start()  # same port, empty: the record must come back
            async with reader(redis_srv.url) as rd:
                await eventually(lambda: _has(rd, rid), within=5.0)
            assert not task.done()
        assert task.result() == 0


async def test_model_version_flag_wins(redis_srv: RedisServer) -> None:
    want = (ModelInfo("m", "pinned", ModelState.READY),)
    async with (
        reader(redis_srv.url) as rd,
        fake() as srv,
        agent(srv, redis_srv.url, versions={"m": "pinned"}) as (rid, _),
    ):

        async def pinned() -> bool:
            rec = await rd.record(rid)
            return rec is not None and rec.models == want

        await eventually(pinned)


class _Jittery:
    """An adapter whose load changes a lot on every probe."""

    def __init__(self) -> None:
        self.n = 0

    @property
    def kind(self) -> ServerKind:
        return ServerKind.VLLM

    async def probe(self) -> Probe:
        self.n += 1
        return Probe(True, (ModelInfo("m", "v", ModelState.READY),), LoadStats(running=self.n * 10))


async def test_publishes_at_most_20_per_second() -> None:
    reg = MemoryRegistry(time.monotonic)
    target = Target("n/vllm-1", "n", "r", "z", "127.0.0.1", 1, ServerKind.VLLM)
    adapter = _Jittery()
    timing = Timing(interval_s=1.0, ttl_s=3.0, poll_interval_s=0.001)
    pub = ReplicaPublisher(target, adapter, NoGpu(), reg, timing)
    tasks = [asyncio.create_task(pub.probe_loop()), asyncio.create_task(pub.publish_loop())]
    await asyncio.sleep(1.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert adapter.n > 100  # it kept probing fast...
    assert 10 <= pub.publishes <= 21  # ...but wrote at most ~20 times in that second
    (entry,) = await reg.read_all()
    assert decode_entry(entry).load.running > 0


def test_cli_agent_publishes_and_removes_on_sigterm(procs: Procs, redis_srv: RedisServer) -> None:
    port = free_port()
    procs.aixds("fake-llm", "fake-llm", "--listen", f"127.0.0.1:{port}", "--model", "m")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200, 15)
    a = procs.aixds(
        "agent", "agent", "--redis", redis_srv.url, "--node", "gpu-7", "--region", "us",
        "--zone", "us-2", "--server", f"vllm=http://127.0.0.1:{port}",
        "--model-version", "m=v9", "--interval", "0.5", "--ttl", "2", "--advertise", "10.1.2.3",
    )  # fmt: skip
    rid = f"gpu-7/vllm-{port}"

    def published() -> bool:
        recs = asyncio.run(_read(redis_srv.url))
        rec = recs.get(rid)
        return (
            rec is not None
            and rec.models == (ModelInfo("m", "v9", ModelState.READY),)
            and (rec.address, rec.port, rec.zone) == ("10.1.2.3", port, "us-2")
        )

    wait_until(published, 15, what="agent record")
    a.stop(timeout=10)
    assert a.popen is not None and a.popen.returncode == 0
    assert asyncio.run(_read(redis_srv.url)) == {}


async def _read(url: str) -> dict[str, ReplicaRecord]:
    async with reader(url) as rd:
        return await rd.records()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "no model servers"),
        (["--server", "nonsense=http://127.0.0.1:9"], "unknown server kind"),
        (["--server", "vllm=http://127.0.0.1:9", "--gpu", "bogus"], "invalid choice"),
        (["--server", "vllm=ftp://x:9"], "http(s)"),
        (["--server", "vllm=http://h:9", "--server", "vllm=http://g:9"], "same replica id"),
        (["--server", "vllm=http://127.0.0.1:9", "--ttl", "0.5"], "--ttl"),
    ],
)
def test_cli_agent_rejects_bad_flags(flags: list[str], message: str) -> None:
    argv = [sys.executable, "-m", "controlplane", "agent", "--redis", "redis://127.0.0.1:1/0",
            "--node", "n", "--region", "r", "--zone", "z", *flags]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
