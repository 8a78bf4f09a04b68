"""The load/unload calls of each kind, against in-test servers that answer as the real ones."""

from __future__ import annotations

import json

import httpx
import pytest

from controlplane.agent.placement.desired import Desired, DesiredError, parse_desired
from controlplane.agent.placement.loaders import (
    LoadError,
    OllamaLoader,
    TritonLoader,
    VllmLoraLoader,
    make_loader,
    server_message,
)
from controlplane.agent.servers.scrape import Reply
from controlplane.fleet.model import ServerKind
from tests.unit.fake_lora import FakeLoraServer
from tests.unit.httpstub import StubRequest, StubResponse, StubServer


# -- the desired-models format ---------------------------------------------------------------
def test_parse_desired_defaults_and_fields() -> None:
    assert parse_desired("m", "{}") == Desired(model="m")
    d = parse_desired(
        "sql", '{"server": "vllm-8000", "version": "v2", "path": "/a", "state": "unloaded"}'
    )
    assert (d.server, d.version, d.path, d.loaded) == ("vllm-8000", "v2", "/a", False)
    assert parse_desired("m", '{"keep_alive": 300}').keep_alive == "300"
    assert parse_desired("m", '{"keep_alive": "1h30m"}').keep_alive == "1h30m"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nope", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"sever": "x"}', "unknown key"),
        ('{"state": "gone"}', "state"),
        ('{"version": 2}', "version"),
        ('{"keep_alive": "forever"}', "keep_alive"),
        ('{"path": "' + "x" * 5000 + '"}', "over 4096 bytes"),
    ],
)
def test_parse_desired_errors(raw: str, message: str) -> None:
    with pytest.raises(DesiredError, match=message):
        parse_desired("m", raw)


# -- vLLM LoRA -------------------------------------------------------------------------------
async def test_vllm_lora_load_unload_and_their_idempotent_errors() -> None:
    with FakeLoraServer() as srv:
        async with httpx.AsyncClient() as client:
            loader = VllmLoraLoader(srv.url, client, 5.0)
            want = Desired(model="sql", path="/adapters/sql")
            await loader.load(want)
            assert srv.loras == {"sql": "/adapters/sql"}
            await loader.load(want)  # "already been loaded": fine
            await loader.reload(Desired(model="sql", path="/adapters/sql-v2"))
            assert srv.loras == {"sql": "/adapters/sql-v2"}
            await loader.unload(want)
            await loader.unload(want)  # "cannot be found": already gone, fine
            assert srv.loras == {}
            srv.fail_loads = 1
            with pytest.raises(LoadError, match="CUDA out of memory") as e:
                await loader.load(want)
            assert not e.value.permanent


async def test_vllm_without_runtime_lora_updating_says_how_to_fix_it() -> None:
    with FakeLoraServer() as srv:
        srv.runtime_updates = False
        async with httpx.AsyncClient() as client:
            loader = VllmLoraLoader(srv.url, client, 5.0)
            with pytest.raises(LoadError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
                await loader.load(Desired(model="sql", path="/a"))
            with pytest.raises(LoadError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
                await loader.unload(Desired(model="sql"))


async def test_vllm_needs_a_path() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(LoadError) as e:
            await VllmLoraLoader("http://127.0.0.1:9", client, 1.0).load(Desired(model="x"))
    assert e.value.permanent


# -- Triton ----------------------------------------------------------------------------------
def triton(req: StubRequest) -> StubResponse:
    if req.path == "/v2/repository/models/good%2Fmodel/load":
        return StubResponse(200, b"")
    if req.path.endswith("/unload"):
        return StubResponse(200, b"")
    return StubResponse(
        400, {"error": "explicit model load / unload is not allowed if polling is enabled"}
    )


async def test_triton_repository_calls() -> None:
    with StubServer(triton) as srv:
        async with httpx.AsyncClient() as client:
            loader = TritonLoader(srv.url, client, 5.0)
            await loader.load(Desired(model="good/model"))  # the name is quoted into the path
            await loader.unload(Desired(model="x"))
            with pytest.raises(LoadError, match="model-control-mode=explicit"):
                await loader.load(Desired(model="other"))
        assert srv.requests[0].method == "POST" and srv.requests[0].json() == {}


# -- Ollama ----------------------------------------------------------------------------------
def ollama(req: StubRequest) -> StubResponse:
    body = req.json()
    if body["model"] == "missing:latest":
        return StubResponse(
            404, {"error": "model 'missing:latest' not found, try pulling it first"}
        )
    reason = "unload" if body["keep_alive"] == 0 else "load"
    return StubResponse(
        200, {"model": body["model"], "response": "", "done": True, "done_reason": reason}
    )


async def test_ollama_keep_alive() -> None:
    with StubServer(ollama) as srv:
        async with httpx.AsyncClient() as client:
            loader = OllamaLoader(srv.url, client, 5.0)
            await loader.load(Desired(model="llama3.2:3b"))
            await loader.load(Desired(model="llama3.2:3b", keep_alive="30m"))
            await loader.unload(Desired(model="llama3.2:3b"))
            with pytest.raises(LoadError, match="try pulling it first"):
                await loader.load(Desired(model="missing:latest"))
        sent = [r.json() for r in srv.requests]
        assert [(b["keep_alive"], b["stream"]) for b in sent[:3]] == [
            (-1, False),
            ("30m", False),
            (0, False),
        ]
        assert all("prompt" not in b for b in sent)


def test_kinds_with_a_loader_and_what_each_can_do() -> None:
    client = httpx.AsyncClient()
    loaders = {k: make_loader(k, "http://h:1", client, 1.0) for k in ServerKind}
    can = {k: (lo.can_load, lo.can_sleep) for k, lo in loaders.items() if lo is not None}
    assert can == {
        ServerKind.VLLM: (True, True),
        ServerKind.TRITON: (True, False),
        ServerKind.OLLAMA: (True, False),
        ServerKind.SGLANG: (False, True),
    }


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"object": "error", "message": "flat", "type": "BadRequestError"}, "HTTP 400: flat"),
        ({"error": {"message": "nested", "type": "BadRequestError"}}, "HTTP 400: nested"),
        ({"detail": "fastapi"}, "HTTP 400: fastapi"),
        ({"error": "plain"}, "HTTP 400: plain"),
    ],
)
def test_server_message_reads_flat_and_nested_error_bodies(body: object, want: str) -> None:
    raw = json.dumps(body).encode()
    assert server_message(Reply(400, raw)) == want
