"""The fake LLM server's performance model and simulated GPU, on a real socket.

Batching slows each token, KV capacity gates admission (and preempts under pressure),
prefill costs per prompt token, speed / noisy neighbour / throttling scale everything,
``/sim/gpu`` follows the load, injected GPU faults show up, and a crash is a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import CRASH_EXIT_CODE, FakeLLMServer
from controlplane.sim.simgpu import GiB, GpuSpec
from tests.metrics import metric
from tests.support import Procs, free_port, wait_until

pytestmark = pytest.mark.integration

PLAIN = {"ttft_ms": 0.0, "prefill_tps": 0.0, "batch_slowdown": 0.0}
"""No prefill cost and no batch effect, unless a test sets them."""


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[tuple[FakeLLMServer, httpx.AsyncClient]]:
    kw.setdefault("replica_id", "r-1")
    async with (
        FakeLLMServer(FakeLLMConfig(models=("m",), **kw)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client,
    ):
        yield srv, client


async def timed(c: httpx.AsyncClient, prompt: Any = "x", max_tokens: int = 10) -> float:
    t = time.monotonic()
    r = await c.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == max_tokens
    return time.monotonic() - t


async def gpu(c: httpx.AsyncClient) -> dict[str, Any]:
    r = await c.get("/sim/gpu")
    assert r.status_code == 200
    (g,) = r.json()["gpus"]
    assert isinstance(g, dict)
    return g


async def test_batching_slows_each_token() -> None:
    async with fake(tpot_ms=40, **{**PLAIN, "batch_slowdown": 0.5}) as (_, c):
        alone = await timed(c, max_tokens=6)  # 5 decode steps of 40 ms
        together = await asyncio.gather(*(timed(c, max_tokens=6) for _ in range(5)))
        # Batch of 5: each step takes 40 * (1 + 0.5 * 4) = 120 ms.
        assert min(together) > 2.0 * alone
        assert max(together) < 4.0 * alone
    async with fake(tpot_ms=40, **PLAIN) as (_, c):
        before = await timed(c, max_tokens=6)
        together = await asyncio.gather(*(timed(c, max_tokens=6) for _ in range(5)))
        after = await timed(c, max_tokens=6)
        # without the slowdown, a batch is free; "alone" is timed before and after, so a
        # machine that slows down meanwhile (server and client share this event loop)
        # moves the baseline too
        assert sorted(together)[2] < 1.5 * max(before, after), (before, together, after)


async def test_prefill_costs_per_prompt_token() -> None:
    async with fake(tpot_ms=5, ttft_ms=0, prefill_tps=1000) as (_, c):
        short = await timed(c, prompt=[1] * 10, max_tokens=1)
        long = await timed(c, prompt=[1] * 250, max_tokens=1)
    assert short < 0.1
    assert 0.24 <= long < 0.5  # 250 tokens at 1000 tokens/s


async def test_kv_capacity_blocks_admission() -> None:
    async with fake(tpot_ms=20, kv_capacity_tokens=100, max_running=8, **PLAIN) as (_, c):
        # Different prompts: with the same one the second would share the first's KV.
        first = asyncio.create_task(timed(c, prompt=[1] * 60, max_tokens=10))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(timed(c, prompt=[2] * 60, max_tokens=10))
        await asyncio.sleep(0.05)
        m = (await c.get("/metrics")).text
        # Room for 8 sequences, but not for a second 60-token prompt in 100 tokens of KV.
        assert metric(m, "vllm:num_requests_running") == 1.0
        assert metric(m, "vllm:num_requests_waiting") == 1.0
        assert metric(m, "vllm:kv_cache_usage_perc") >= 0.6
        t1, t2 = await asyncio.gather(first, second)
        after = (await c.get("/metrics")).text
    assert t2 > t1 + 0.1  # it started only when the first one freed its KV
    assert metric(after, "vllm:num_preemptions_total") == 0.0  # it waited, never ran


async def test_kv_pressure_preempts_the_newest_and_both_finish() -> None:
    async with fake(tpot_ms=5, kv_capacity_tokens=100, **PLAIN) as (_, c):
        # Both fit at first (40 + 40 tokens); their outputs then outgrow the cache.
        a = asyncio.create_task(timed(c, prompt=[1] * 40, max_tokens=40))
        await asyncio.sleep(0.02)
        b = asyncio.create_task(timed(c, prompt=[2] * 40, max_tokens=40))
        ta, tb = await asyncio.gather(a, b)
        m = (await c.get("/metrics")).text
    assert metric(m, "vllm:num_preemptions_total") >= 1.0
    assert metric(m, "vllm:generation_tokens_total") == 80.0  # recompute, not regenerate
    assert metric(m, "vllm:prompt_tokens_total") == 80.0
    assert tb > ta


async def test_speed_factor_and_noisy_neighbour() -> None:
    # 60 tokens: the decode time (1.2 s at speed 1) dwarfs the per-request overhead, which
    # grows on a loaded machine (client and server share this event loop)
    async with fake(tpot_ms=20, **PLAIN) as (_, c):
        base = await timed(c, max_tokens=60)
        await c.post("/control", json={"speed": 4.0})
        fast = await timed(c, max_tokens=60)
        await c.post("/control", json={"speed": 1.0, "external_load": 0.5})
        shared = await timed(c, max_tokens=60)
        state = (await c.get("/control")).json()
    assert fast < base / 2.0  # ideally a quarter
    assert 1.5 * base < shared < 3.0 * base  # half the GPU: twice as slow
    assert state["external_load"] == 0.5 and state["effective_speed"] == 0.5


async def test_sim_gpu_follows_the_load() -> None:
    spec = GpuSpec(mem_total_bytes=80 * GiB, weights_bytes=16 * GiB, power_limit_w=700.0)
    cfg = {"tpot_ms": 5, "max_running": 4, "kv_capacity_tokens": 2000, "gpu": spec, **PLAIN}
    async with fake(**cfg) as (srv, c):
        idle = await gpu(c)
        assert idle["utilization_gpu_pct"] <= 5
        assert idle["clocks_event_reasons"] & 0x1  # GPU idle
        assert idle["memory_used_bytes"] == 16 * GiB  # weights only
        assert idle["memory_total_bytes"] == 80 * GiB
        assert idle["power_limit_mw"] == 700_000
        assert idle["uuid"].startswith("GPU-") and len(idle["uuid"]) == 40

        # Four long requests keep the batch full for about 1.5 s. Utilisation is
        # the busy share over ~0.5 s (1 - exp(-t / 0.5) after t seconds at full load:
        # 75 % at 0.7 s); poll for it rather than trust one sleep, since on a loaded
        # machine the batch may start a few hundred ms after the tasks are created.
        load = [asyncio.create_task(timed(c, prompt=[1] * 100, max_tokens=300)) for _ in range(4)]
        await asyncio.sleep(0.7)
        busy = await gpu(c)
        deadline = asyncio.get_running_loop().time() + 1.0
        while busy["utilization_gpu_pct"] < 60 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            busy = await gpu(c)
        assert srv.llm is not None
        # Memory follows KV use exactly: read both in the same instant.
        engine, doc = srv.llm.engine, srv.llm.gpu.document()
        kv, used = engine.kv_usage, doc["gpus"][0]["memory_used_bytes"]
        await asyncio.gather(*load)
    assert busy["utilization_gpu_pct"] >= 60
    assert not busy["clocks_event_reasons"] & 0x1
    assert busy["utilization_memory_pct"] > idle["utilization_memory_pct"]
    assert busy["power_mw"] > idle["power_mw"] + 100_000
    assert busy["temperature_c"] > idle["temperature_c"] + 10
    # KV in use shows as memory beyond the weights (pool = 0.9 * 80 - 16 = 56 GiB).
    assert kv >= 0.2  # four sequences of 100 + output tokens in 2000
    assert used == 16 * GiB + int(kv * 56 * GiB)
    assert busy["memory_used_bytes"] > 16 * GiB + 0.1 * 56 * GiB


async def test_noisy_neighbour_shows_on_the_idle_gpu() -> None:
    async with fake(external_load=0.4) as (_, c):
        g = await gpu(c)
    assert g["utilization_gpu_pct"] == 40
    assert not g["clocks_event_reasons"] & 0x1  # someone else is using it


async def test_gpu_throttle_slows_and_shows() -> None:
    async with fake(tpot_ms=20, **PLAIN) as (_, c):
        base = await timed(c, max_tokens=15)
        await c.post("/control", json={"gpu_throttle": True})
        g = await gpu(c)
        hot = await timed(c, max_tokens=15)
    assert g["clocks_event_reasons"] & 0x60 == 0x60  # SW and HW thermal slowdown
    assert g["temperature_c"] >= 88
    assert hot > 1.3 * base  # THROTTLED_SPEED = 0.6: ideally 1.67 times as long


async def test_gpu_faults_show_up_and_clear() -> None:
    async with fake(tpot_ms=1, **PLAIN) as (_, c):
        r = await c.post("/control", json={"gpu_fault": "xid 79"})
        assert r.status_code == 200 and r.json()["gpu_fault"] == "xid 79"
        g = await gpu(c)
        assert g["xid_events"] == [{"seq": 1, "xid": 79}]
        assert not g["lost"]
        assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 200

        await c.post("/control", json={"gpu_fault": "ecc 2"})
        await c.post("/control", json={"gpu_fault": "remap"})
        g = await gpu(c)
        assert g["ecc_uncorrected_volatile"] == 2
        assert g["remapped_rows"] == {
            "correctable": 0,
            "uncorrectable": 2,
            "pending": True,
            "failure": True,
        }
        await c.post("/control", json={"gpu_fault": "lost"})
        g = await gpu(c)
        assert g["lost"] and g["xid_events"][-1] == {"seq": 2, "xid": 79}

        for bad in ("melt", 79, "xid", "xid 1e9"):
            r = await c.post("/control", json={"gpu_fault": bad})
            assert r.status_code == 400, bad
        r = await c.post("/control", json={"gpu_fault": None})
        assert r.status_code == 200
        g = await gpu(c)
    assert (g["lost"], g["remapped_rows"]["failure"], g["ecc_uncorrected_volatile"]) == (
        False,
        False,
        0,
    )
    assert len(g["xid_events"]) == 2  # history stays


async def test_stall_for_resumes_by_itself() -> None:
    async with fake(tpot_ms=5, **PLAIN) as (_, c):
        await c.post("/control", json={"stall_for": 0.3})
        took = await timed(c, max_tokens=3)
        state = (await c.get("/control")).json()
    assert 0.28 <= took < 1.0
    assert state["stall"] is False


async def test_crash_in_process_stops_the_server_hard() -> None:
    async with fake(tpot_ms=50) as (srv, c):
        slow = asyncio.create_task(
            c.post("/v1/completions", json={"prompt": "x", "max_tokens": 100})
        )
        await asyncio.sleep(0.1)
        r = await c.post("/control", json={"crash": True})
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            for _ in range(100):
                await asyncio.sleep(0.02)
                async with httpx.AsyncClient(timeout=1.0) as fresh:
                    await fresh.get(f"{srv.url}/health")
        assert srv.crashed
        try:
            cut = await slow
        except httpx.HTTPError:
            return  # the connection was cut
        assert cut.status_code == 503  # or it was aborted: it did not complete


def test_cli_flags_and_crash_exit_status(procs: Procs) -> None:
    port = free_port()
    p = procs.aixds(
        "fake-llm", "fake-llm", "--listen", f"127.0.0.1:{port}", "--model", "m",
        "--noisy-neighbor", "0.2", "--prefill-tps", "5000", "--batch-slowdown", "0.1",
        "--gpu-mem-gib", "40", "--weights-gib", "8", "--gpu-power-w", "350",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, 15, what="fake-llm up")
    state = httpx.get(f"{url}/control").json()
    assert (state["external_load"], state["prefill_tps"], state["batch_slowdown"]) == (
        0.2,
        5000.0,
        0.1,
    )
    (g,) = httpx.get(f"{url}/sim/gpu").json()["gpus"]
    assert (g["memory_total_bytes"], g["memory_used_bytes"], g["power_limit_mw"]) == (
        40 * GiB,
        8 * GiB,
        350_000,
    )
    assert g["utilization_gpu_pct"] == 20
    r = httpx.post(f"{url}/control", json={"crash": True})
    assert r.status_code == 200
    assert p.popen is not None
    assert p.popen.wait(10) == CRASH_EXIT_CODE


def test_cli_rejects_bad_gpu_flags(procs: Procs) -> None:
    for flags in (["--noisy-neighbor", "0.99"], ["--gpu-mem-gib", "8", "--weights-gib", "16"]):
        p = procs.aixds(
            "bad", "fake-llm", "--listen", "127.0.0.1:0", "--model", "m", *flags
        )  # fmt: skip
        assert p.popen is not None
        assert p.popen.wait(15) == 2
    with contextlib.suppress(ProcessLookupError):
        p.kill(signal.SIGKILL)
