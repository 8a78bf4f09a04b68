"""The fake LLM server's runtime LoRA API, in-process: vLLM's answers, listing, serving,
the switches, and the agent's own ``VllmLoraLoader`` and model parser against it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.agent.placement.desired import Desired
from controlplane.agent.placement.loaders import LoadError, VllmLoraLoader
from controlplane.agent.servers.vllm import parse_models
from controlplane.sim.app import FakeLLM, FakeLLMConfig
from controlplane.sim.control import ControlError, parse_control
from controlplane.sim.fake_llm import config_from_args, configure_parser
from controlplane.sim.lora import LoraAdapters, LoraRefused

BASE = "llama"
URL = "http://fake"


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[tuple[FakeLLM, httpx.AsyncClient]]:
    kw.setdefault("runtime_lora", True)
    kw.setdefault("lora_load_ms", 20.0)
    llm = FakeLLM(FakeLLMConfig(models=(BASE,), replica_id="r-1", ttft_ms=1, tpot_ms=1, **kw))
    try:
        transport = httpx.ASGITransport(app=llm.app)
        async with httpx.AsyncClient(transport=transport, base_url=URL, timeout=5) as client:
            yield llm, client
    finally:
        llm.close()


async def load(c: httpx.AsyncClient, name: str, path: str = "/adapters/x") -> httpx.Response:
    return await c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})


async def unload(c: httpx.AsyncClient, name: str) -> httpx.Response:
    return await c.post("/v1/unload_lora_adapter", json={"lora_name": name})


async def listed(c: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in (await c.get("/v1/models")).json()["data"]}


async def chat(c: httpx.AsyncClient, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return await c.post("/v1/chat/completions", json=body)


def assert_vllm_error(r: httpx.Response, status: int, kind: str, text: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body == {
        "object": "error",
        "message": body["message"],
        "type": kind,
        "param": None,
        "code": status,
    }
    assert text in body["message"]
    assert r.headers["x-replica"] == "r-1"


# -- the endpoints ---------------------------------------------------------------------------
async def test_load_lists_and_serves_the_adapter_only_once_loaded() -> None:
    async with fake(lora_load_ms=200, version="v7") as (_, c):
        assert (await chat(c, "sql")).status_code == 404
        pending = asyncio.create_task(load(c, "sql", "/adapters/sql"))
        for _ in range(100):  # the task starts at the next await; it loads for 200 ms
            if (await c.get("/control")).json()["lora_in_progress"] == ["sql"]:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the load never started")
        assert set(await listed(c)) == {BASE}  # not listed while it loads
        assert (await chat(c, "sql")).status_code == 404
        r = await pending
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text == "Success: LoRA adapter 'sql' added successfully."
        models = await listed(c)
        assert set(models) == {BASE, "sql"}
        card = models["sql"]
        assert (card["object"], card["owned_by"], card["root"], card["parent"]) == (
            "model",
            "vllm",
            "/adapters/sql",
            BASE,
        )
        assert card["aixds_version"] == models[BASE]["aixds_version"] == "v7"
        assert models[BASE]["parent"] is None
        served = await chat(c, "sql")
        assert served.status_code == 200
        assert served.json()["model"] == "sql"
        assert (await chat(c, "other")).status_code == 404


async def test_version_switch_applies_to_adapters_too() -> None:
    async with fake() as (_, c):
        assert (await load(c, "sql")).status_code == 200
        await c.post("/control", json={"version": "v2"})
        assert {m["aixds_version"] for m in (await listed(c)).values()} == {"v2"}


async def test_loading_a_loaded_name_is_400_and_concurrent_loads_wait() -> None:
    async with fake(lora_load_ms=50) as (llm, c):
        first, second = await asyncio.gather(load(c, "sql", "/a"), load(c, "sql", "/b"))
        assert first.status_code == 200
        assert_vllm_error(second, 400, "InvalidUserInput", "'sql' has already been loaded")
        assert_vllm_error(await load(c, "sql", "/c"), 400, "InvalidUserInput", "already")
        assert dict((await c.get("/control")).json()["lora_adapters"]) == {"sql": "/a"}
        assert llm.lora.load_calls == 3


@pytest.mark.parametrize(
    ("path", "body", "kind", "text"),
    [
        ("/v1/load_lora_adapter", b"{nope", "BadRequestError", "not JSON"),
        ("/v1/load_lora_adapter", b"[]", "BadRequestError", "JSON object"),
        ("/v1/load_lora_adapter", b'{"lora_name": "x"}', "BadRequestError", "'lora_path'"),
        (
            "/v1/load_lora_adapter",
            b'{"lora_name": 3, "lora_path": "/a"}',
            "BadRequestError",
            "'lora_name' must be a string",
        ),
        (
            "/v1/load_lora_adapter",
            b'{"lora_name": "", "lora_path": "/a"}',
            "InvalidUserInput",
            "Both 'lora_name' and 'lora_path' must be provided.",
        ),
        ("/v1/unload_lora_adapter", b"{}", "BadRequestError", "'lora_name' is missing"),
        ("/v1/unload_lora_adapter", b'{"lora_name": ""}', "InvalidUserInput", "needs to be"),
    ],
)
async def test_bad_bodies_are_400_with_vllms_error(
    path: str, body: bytes, kind: str, text: str
) -> None:
    async with fake() as (llm, c):
        assert_vllm_error(await c.post(path, content=body), 400, kind, text)
        assert not llm.lora.loaded


async def test_unload_then_unknown_is_404() -> None:
    async with fake() as (_, c):
        await load(c, "sql")
        r = await unload(c, "sql")
        assert r.status_code == 200
        assert r.text == "Success: LoRA adapter 'sql' removed successfully."
        assert set(await listed(c)) == {BASE}
        assert (await chat(c, "sql")).status_code == 404
        assert_vllm_error(await unload(c, "sql"), 404, "NotFoundError", "'sql' cannot be found")


async def test_fail_loads_switch_and_runtime_delay() -> None:
    async with fake() as (_, c):
        r = await c.post("/control", json={"lora_fail_loads": 2, "lora_load_ms": 30})
        assert r.status_code == 200
        assert (r.json()["lora_fail_loads"], r.json()["lora_load_ms"]) == (2, 30.0)
        for _ in range(2):
            assert_vllm_error(
                await load(c, "sql", "/a/sql"), 500, "InternalServerError", "lora_fail_loads"
            )
            assert set(await listed(c)) == {BASE}
        assert (await load(c, "sql", "/a/sql")).status_code == 200
        state = (await c.get("/control")).json()
        assert (state["lora_fail_loads"], state["lora_load_calls"]) == (0, 3)
        assert state["lora_adapters"] == {"sql": "/a/sql"}


async def test_a_simulated_restart_forgets_adapters() -> None:
    async with fake() as (_, c):
        await load(c, "sql")
        await c.post("/control", json={"load_time": 0.05})
        assert_vllm_error(await load(c, "x"), 503, "ServiceUnavailableError", "loading")
        await asyncio.sleep(0.1)
        assert set(await listed(c)) == {BASE}


async def test_without_runtime_lora_the_routes_are_404() -> None:
    async with fake(runtime_lora=False) as (llm, c):
        assert (await load(c, "sql")).status_code == 404
        assert (await unload(c, "sql")).status_code == 404
        assert not llm.lora.loaded and llm.lora.load_calls == 0


# -- the agent's loader and parser against it -------------------------------------------------
async def test_agent_loader_against_the_fake() -> None:
    async with fake(lora_load_ms=10) as (llm, c):
        loader = VllmLoraLoader(URL, c, 5.0)
        want = Desired(model="sql", path="/adapters/sql", version="v3")
        await loader.load(want)
        await loader.load(want)  # already loaded: success
        assert parse_models((await c.get("/v1/models")).json(), {"sql": "v3"}) == (
            (BASE, "default"),
            ("sql", "v3"),
        )
        await loader.reload(Desired(model="sql", path="/adapters/sql-v2"))
        assert llm.lora.loaded["sql"].path == "/adapters/sql-v2"
        await loader.unload(want)
        await loader.unload(want)  # cannot be found: already gone
        assert not llm.lora.loaded
        llm.lora.fail_loads = 1
        with pytest.raises(LoadError, match=r"HTTP 500: Failed to load LoRA adapter 'sql'"):
            await loader.load(want)
    async with fake(runtime_lora=False) as (_, c):
        with pytest.raises(LoadError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            await VllmLoraLoader(URL, c, 5.0).load(want)


# -- the adapters alone, the switches, the CLI ------------------------------------------------
async def test_unload_waits_for_a_load_in_progress() -> None:
    lora = LoraAdapters(load_ms=30)
    loading = asyncio.create_task(lora.load("a", "/a"))
    await asyncio.sleep(0)
    assert lora.in_progress == ["a"]
    await lora.unload("a")  # waited for the load, then removed it
    await loading
    assert not lora.loaded and not lora.in_progress


async def test_a_restart_during_a_load_fails_it() -> None:
    lora = LoraAdapters(load_ms=30)
    loading = asyncio.create_task(lora.load("a", "/a"))
    await asyncio.sleep(0)
    lora.forget_all()
    with pytest.raises(LoraRefused, match="restarted") as e:
        await loading
    assert e.value.status == 500
    assert not lora.loaded


def test_control_switches() -> None:
    assert parse_control({"lora_fail_loads": 2, "lora_load_ms": 0}) == {
        "lora_fail_loads": 2,
        "lora_load_ms": 0.0,
    }
    for bad in ({"lora_fail_loads": 1.5}, {"lora_fail_loads": -1}, {"lora_load_ms": "x"}):
        with pytest.raises(ControlError):
            parse_control(bad)


def _args(*flags: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure_parser(p)
    return p.parse_args(["--listen", "127.0.0.1:0", "--model", BASE, *flags])


def test_cli_flags_and_vllms_environment_switch() -> None:
    config, _, _ = config_from_args(_args(), environ={})
    assert (config.runtime_lora, config.lora_load_ms) == (False, 500.0)
    config, _, _ = config_from_args(_args("--runtime-lora", "--lora-load-ms", "20"), environ={})
    assert (config.runtime_lora, config.lora_load_ms) == (True, 20.0)
    for value, on in (("True", True), ("1", True), ("0", False), ("false", False)):
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": value}
        assert config_from_args(_args(), environ=env)[0].runtime_lora is on
