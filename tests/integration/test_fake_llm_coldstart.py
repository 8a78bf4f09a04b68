"""The fake server's models on demand and sleep mode, on a real socket: an available model
loads in its load time and takes its GPU memory, a load that does not fit is refused, an
unload frees it, sleep levels 1 and 2 free the GPU and wake in their times, and while
asleep inference answers 503 while ``/v1/models`` still lists the models."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer, config_from_args, configure_parser
from controlplane.sim.residency import parse_available
from controlplane.sim.simgpu import GiB, GpuSpec

pytestmark = pytest.mark.integration

AVAILABLE = "qwen:30:400,mistral:40:300,tiny:1:50,plain:1"
"""On an 80 GiB GPU with a 16 GiB base: qwen and mistral together do not fit."""


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    cfg = FakeLLMConfig(
        models=("base",),
        replica_id="r-1",
        ttft_ms=0,
        tpot_ms=5,
        gpu=GpuSpec(mem_total_bytes=80 * GiB, weights_bytes=16 * GiB),
        available=parse_available(AVAILABLE),
        sleep_mode=True,
        wake_ms=150,
        **kw,
    )
    async with (
        FakeLLMServer(cfg) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=10.0) as client,
    ):
        yield client


async def load(c: httpx.AsyncClient, name: str) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = await c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": name})
    return r, time.monotonic() - t


async def used_gib(c: httpx.AsyncClient) -> float:
    (g,) = (await c.get("/sim/gpu")).json()["gpus"]
    assert g["memory_total_bytes"] == 80 * GiB
    return float(g["memory_used_bytes"]) / GiB


async def listed(c: httpx.AsyncClient) -> set[str]:
    return {m["id"] for m in (await c.get("/v1/models")).json()["data"]}


async def chat(c: httpx.AsyncClient, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return await c.post("/v1/chat/completions", json=body)


async def test_an_available_model_loads_in_its_time_takes_memory_and_serves() -> None:
    async with fake() as c:
        assert await used_gib(c) == pytest.approx(16, abs=0.01)
        r, took = await load(c, "qwen")
        assert r.status_code == 200, r.text
        assert 0.38 <= took < 1.5
        assert "qwen" in await listed(c)
        assert await used_gib(c) == pytest.approx(46, abs=0.01)
        r = await chat(c, "qwen")
        assert r.status_code == 200 and r.json()["model"] == "qwen"
        avail = {m["name"]: m for m in (await c.get("/sim/available")).json()["models"]}
        assert avail["qwen"]["loaded"] is True and avail["mistral"]["loaded"] is False
        assert avail["qwen"]["mem_bytes"] == 30 * GiB and avail["qwen"]["load_s"] == 0.4
        assert avail["tiny"]["wake_s"] == 0.15


async def test_a_load_that_does_not_fit_is_refused_and_an_unload_frees_room() -> None:
    async with fake() as c:
        assert (await load(c, "qwen"))[0].status_code == 200
        r, took = await load(c, "mistral")
        assert r.status_code == 500
        assert "needs 40.00 GiB, 34.00 GiB free of 80.00 GiB" in r.json()["message"]
        assert took < 0.2  # refused at once, not after the load time
        assert "mistral" not in await listed(c)
        r = await c.post("/v1/unload_lora_adapter", json={"lora_name": "qwen"})
        assert r.status_code == 200
        assert await used_gib(c) == pytest.approx(16, abs=0.01)
        assert (await load(c, "mistral"))[0].status_code == 200


async def test_the_load_time_knob_sets_the_time_of_models_without_their_own() -> None:
    async with fake() as c:
        r = await c.post("/control", json={"load_time_ms": 250})
        assert r.status_code == 200 and r.json()["load_time_ms"] == 250
        avail = {m["name"]: m for m in (await c.get("/sim/available")).json()["models"]}
        assert avail["plain"]["load_s"] == 0.25 and avail["tiny"]["load_s"] == 0.05
        _, took = await load(c, "plain")
        assert 0.23 <= took < 1.0


async def test_sleep_level_1_frees_the_gpu_refuses_inference_and_wakes_in_wake_ms() -> None:
    async with fake() as c:
        assert (await load(c, "tiny"))[0].status_code == 200
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}
        assert (await c.post("/sleep", params={"level": "1"})).status_code == 200
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert await used_gib(c) == 0
        r = await chat(c, "tiny")
        assert r.status_code == 503 and "sleeping" in r.json()["error"]["message"]
        assert await listed(c) == {"base", "tiny"}  # still listed
        assert (await c.get("/health")).status_code == 200  # as vLLM's: up, asleep
        t = time.monotonic()
        assert (await c.post("/wake_up")).status_code == 200
        assert 0.14 <= time.monotonic() - t < 1.0
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": False}
        assert await used_gib(c) == pytest.approx(17, abs=0.01)
        assert (await chat(c, "tiny")).status_code == 200


async def test_sleep_level_2_wakes_by_reloading_and_tags_wake_in_parts() -> None:
    async with fake(load_time_s=0.0) as c:
        assert (await load(c, "qwen"))[0].status_code == 200  # 400 ms
        assert (await c.post("/sleep?level=2")).status_code == 200
        t = time.monotonic()
        r = await c.post("/wake_up", params=[("tags", "weights")])
        assert r.status_code == 200
        assert 0.54 <= time.monotonic() - t < 1.5  # wake 150 + qwen's 400 ms
        assert (await c.get("/is_sleeping")).json()["is_sleeping"] is True  # KV still asleep
        assert await used_gib(c) == pytest.approx(46, abs=0.01)
        t = time.monotonic()
        assert (await c.post("/wake_up?tags=kv_cache")).status_code == 200
        assert time.monotonic() - t < 0.1
        assert (await c.get("/is_sleeping")).json()["is_sleeping"] is False
        assert (await c.post("/wake_up?tags=gpu")).status_code == 400


async def test_sleep_aborts_requests_in_flight_and_mode_wait_lets_them_finish() -> None:
    async with fake() as c:
        body = {"prompt": "x", "max_tokens": 60}  # 300 ms of decoding
        inflight = asyncio.create_task(c.post("/v1/completions", json=body))
        await asyncio.sleep(0.05)
        assert (await c.post("/sleep")).status_code == 200
        assert (await inflight).status_code == 503  # aborted, as vLLM's default mode=abort
        assert (await c.post("/wake_up")).status_code == 200
        inflight = asyncio.create_task(c.post("/v1/completions", json=body))
        await asyncio.sleep(0.05)
        asleep = asyncio.create_task(c.post("/sleep?mode=wait"))
        await asyncio.sleep(0.05)
        assert (await chat(c, "base")).status_code == 503  # no new work while it waits
        assert (await inflight).status_code == 200
        assert (await asleep).status_code == 200
        assert (await c.get("/is_sleeping")).json()["is_sleeping"] is True


async def test_a_load_while_asleep_is_refused_and_an_unload_works() -> None:
    async with fake() as c:
        assert (await load(c, "tiny"))[0].status_code == 200
        await c.post("/sleep")
        r, _ = await load(c, "qwen")
        assert r.status_code == 503 and "sleeps" in r.json()["message"]
        r = await c.post("/v1/unload_lora_adapter", json={"lora_name": "tiny"})
        assert r.status_code == 200
        await c.post("/wake_up")
        assert await used_gib(c) == pytest.approx(16, abs=0.01)


def test_the_cli_flags_reach_the_config() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(
        ["--listen", "127.0.0.1:0", "--model", "base", "--available", "a:8:100,b",
         "--load-time-ms", "700", "--enable-sleep-mode", "--wake-ms", "300",
         "--gpu-mem-gib", "40", "--weights-gib", "8"]
    )  # fmt: skip
    cfg, _, _ = config_from_args(args, environ={})
    assert [a.name for a in cfg.available] == ["a", "b"]
    assert cfg.load_time_ms == 700 and cfg.sleep_mode and cfg.wake_ms == 300
    assert cfg.gpu.mem_total_bytes == 40 * GiB and cfg.gpu.weights_bytes == 8 * GiB
    bad = p.parse_args(["--listen", "127.0.0.1:0", "--model", "a", "--available", "a"])
    with pytest.raises(ValueError, match="served --model"):
        config_from_args(bad, environ={})
