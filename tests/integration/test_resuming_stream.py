"""``ResumingStream`` against the fake vLLM on a real socket: a stream that its server cuts
(a reload aborts it mid-answer) is resumed, and the caller reads one answer, the same
text a stream that was never cut gives. The fake continues its own output the way a
deterministic model continues a prefix, so the stitched text can be compared exactly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.client import ResumingStream, StreamFailed
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from controlplane.sim.openai_format import text

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say something, please."}]}
COMPLETION = {"model": "m", "prompt": "Once upon a time"}


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[tuple[FakeLLMServer, httpx.AsyncClient]]:
    async with (
        FakeLLMServer(FakeLLMConfig(models=("m",), replica_id="r-1", **kw)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=5.0) as client,
    ):
        yield srv, client


async def _read_and_cut(s: ResumingStream, c: httpx.AsyncClient, after: int) -> str:
    """Read ``s``; after ``after`` pieces, reload the server (aborting the stream)."""
    out = []
    async for piece in s:
        out.append(piece)
        if len(out) == after:
            r = await c.post("/control", json={"load_time": 0.15})
            assert r.status_code == 200, r.text
    return "".join(out)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION),
])  # fmt: skip
async def test_a_stream_cut_by_its_server_is_resumed_into_the_same_answer(
    path: str, body: dict[str, Any]
) -> None:
    async with fake(ttft_ms=5, tpot_ms=15) as (_, c):
        s = ResumingStream(c, path, {**body, "max_tokens": 30}, max_resumes=6)
        got = await _read_and_cut(s, c, after=8)
    assert got == text(0, 30)
    assert s.received.text == got and s.received.tokens == 30
    assert s.received.done and s.received.finish_reason == "length"
    assert s.cut and s.resumes >= 1
    first = s.attempts[0]
    assert first.status == 200 and first.error and 8 <= first.tokens < 30
    # Resumes the reload answered 503 carried nothing; the last one carried the rest.
    assert [a.status for a in s.attempts[1:-1]] == [503] * (len(s.attempts) - 2)
    assert s.attempts[-1].status == 200 and not s.attempts[-1].error
    assert sum(a.tokens for a in s.attempts) == 30


async def test_an_uncut_stream_is_one_request() -> None:
    async with fake(ttft_ms=1, tpot_ms=1) as (_, c):
        s = ResumingStream(c, "/v1/chat/completions", {**CHAT, "max_tokens": 12})
        assert await s.text() == text(0, 12)
    assert s.resumes == 0 and not s.cut and s.attempts[0].headers["x-replica"] == "r-1"


async def test_the_first_requests_error_is_the_callers() -> None:
    async with fake(ttft_ms=1, tpot_ms=1) as (_, c):
        s = ResumingStream(c, "/v1/chat/completions", {**CHAT, "max_tokens": 0})
        with pytest.raises(StreamFailed, match="http 400") as e:
            await s.text()
    assert len(e.value.attempts) == 1 and e.value.received.tokens == 0


async def test_a_cut_with_no_resumes_left_fails_with_what_arrived() -> None:
    async with fake(ttft_ms=5, tpot_ms=15) as (_, c):
        s = ResumingStream(c, "/v1/chat/completions", {**CHAT, "max_tokens": 30}, max_resumes=0)
        with pytest.raises(StreamFailed, match="stream cut 1 times") as e:
            await _read_and_cut(s, c, after=5)
    assert 5 <= e.value.received.tokens < 30
    assert e.value.received.text == text(0, e.value.received.tokens)


async def test_the_fake_continues_its_own_output() -> None:
    """What the resume relies on: a completion prompt or a continued assistant message
    that ends with the fake's first k tokens gets tokens k, k+1, ... (vLLM's
    ``continue_final_message`` for chat; with ``add_generation_prompt`` also true it is
    vLLM's 400)."""
    async with fake(ttft_ms=1, tpot_ms=1) as (_, c):
        r = await c.post("/v1/completions", json={"prompt": "Hi" + text(0, 5), "max_tokens": 4})
        assert r.json()["choices"][0]["text"] == text(5, 9)
        msgs = [*CHAT["messages"], {"role": "assistant", "content": text(0, 3)}]
        cont = {"messages": msgs, "max_tokens": 2, "continue_final_message": True}
        r = await c.post("/v1/chat/completions", json={**cont, "add_generation_prompt": False})
        assert r.json()["choices"][0]["message"]["content"] == text(3, 5)
        r = await c.post("/v1/chat/completions", json=cont)
        assert r.status_code == 400 and "add_generation_prompt" in r.text
        # Without the flag a trailing assistant message is context, not a prefix.
        r = await c.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 2})
        assert r.json()["choices"][0]["message"]["content"] == text(0, 2)


async def test_concurrent_streams_cut_together_all_complete() -> None:
    async with fake(ttft_ms=5, tpot_ms=15, max_running=16) as (_, c):
        streams = [
            ResumingStream(c, "/v1/completions", {**COMPLETION, "max_tokens": 25}, max_resumes=6)
            for _ in range(6)
        ]
        tasks = [asyncio.create_task(s.text()) for s in streams]
        await asyncio.sleep(0.15)
        assert (await c.post("/control", json={"load_time": 0.15})).status_code == 200
        texts = await asyncio.gather(*tasks)
    assert texts == [text(0, 25)] * 6
    assert all(s.cut for s in streams)
