"""The fake vLLM server on a real socket: OpenAI bodies, SSE, metrics, queueing, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from controlplane.agent.servers.vllm import parse_metrics
from controlplane.sim.app import FakeLLMConfig
from controlplane.sim.fake_llm import FakeLLMServer
from controlplane.sim.openai_format import TOKENS
from tests.metrics import metric
from tests.support import Procs, free_port, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say something, please."}]}
# 22 characters -> 6 tokens, + 4 for the chat framing.
CHAT_PROMPT_TOKENS = 10


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[tuple[FakeLLMServer, httpx.AsyncClient]]:
    kw.setdefault("replica_id", "r-1")
    async with (
        FakeLLMServer(FakeLLMConfig(models=("m",), **kw)) as srv,
        httpx.AsyncClient(base_url=srv.url, timeout=5.0) as client,
    ):
        yield srv, client


def expected_text(n: int) -> str:
    return "".join(TOKENS[i % len(TOKENS)] for i in range(n))


def sse_events(body: str) -> list[str]:
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


async def test_chat_completion_json() -> None:
    async with fake(ttft_ms=5, tpot_ms=1) as (_, c):
        r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})
    assert r.status_code == 200
    assert r.headers["x-replica"] == "r-1"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "m"
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected_text(5)}
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": 5,
        "total_tokens": CHAT_PROMPT_TOKENS + 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_completion_json_uses_default_tokens_and_default_model() -> None:
    async with fake(ttft_ms=1, tpot_ms=1, default_tokens=3) as (_, c):
        r = await c.post("/v1/completions", json={"prompt": "12345678"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["model"] == "m"
    assert body["choices"][0]["text"] == expected_text(3)
    assert body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_chat_stream_sse_with_usage() -> None:
    req = {**CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    async with fake(ttft_ms=5, tpot_ms=5) as (_, c):
        r = await c.post("/v1/chat/completions", json=req)
    assert r.status_code == 200
    assert r.headers["x-replica"] == "r-1"
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = chunks[1:-1]
    assert "".join(c["choices"][0]["delta"]["content"] for c in deltas) == expected_text(4)
    assert [c["choices"][0]["finish_reason"] for c in deltas] == [None, None, None, "length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": CHAT_PROMPT_TOKENS,
        "completion_tokens": 4,
        "total_tokens": CHAT_PROMPT_TOKENS + 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_completion_stream_tokens_arrive_over_time() -> None:
    async with fake(ttft_ms=20, tpot_ms=20) as (_, c):
        arrivals: list[float] = []
        text = ""
        t0 = time.monotonic()
        req = {"model": "m", "prompt": "x", "max_tokens": 5, "stream": True}
        async with c.stream("POST", "/v1/completions", json=req) as r:
            assert r.headers["x-replica"] == "r-1"
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic() - t0)
                    text += json.loads(line[6:])["choices"][0]["text"]
                elif line:
                    assert line == "data: [DONE]"
    assert text == expected_text(5)
    assert len(arrivals) == 5  # no usage chunk: include_usage was not asked for
    assert arrivals[0] >= 0.015  # time to first token
    assert arrivals[-1] - arrivals[0] >= 0.06  # four decode steps of 20 ms


async def test_unknown_model_is_404_like_vllm() -> None:
    async with fake() as (_, c):
        r = await c.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    assert r.headers["x-replica"] == "r-1"
    err = r.json()["error"]
    assert err["type"] == "NotFoundError"
    assert err["code"] == 404
    assert "nope" in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({**CHAT, "max_tokens": 0}).encode(),
        json.dumps({**CHAT, "max_tokens": "many"}).encode(),
        json.dumps({"model": "m", "messages": []}).encode(),
        json.dumps({**CHAT, "stream": "yes"}).encode(),
    ],
)
async def test_bad_requests_are_400(body: bytes) -> None:
    async with fake() as (_, c):
        r = await c.post("/v1/chat/completions", content=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "BadRequestError"
    assert r.headers["x-replica"] == "r-1"


async def test_models_health_and_metrics_endpoints() -> None:
    async with fake(version="v7") as (_, c):
        models = (await c.get("/v1/models")).json()
        health = await c.get("/health")
        metrics = await c.get("/metrics")
    assert models["object"] == "list"
    (entry,) = models["data"]
    assert (entry["id"], entry["object"], entry["aixds_version"]) == ("m", "model", "v7")
    assert health.status_code == 200
    assert metric(metrics.text, "vllm:num_requests_running", model_name="m", engine="0") == 0.0
    assert metric(metrics.text, "vllm:kv_cache_usage_perc", model_name="m") == 0.0


async def test_queueing_shows_in_metrics_and_in_latency() -> None:
    async with fake(max_running=2, ttft_ms=20, tpot_ms=20) as (_, c):
        req = {**CHAT, "max_tokens": 10}  # ~220 ms each; 6 requests in 3 waves

        async def one() -> float:
            t = time.monotonic()
            r = await c.post("/v1/chat/completions", json=req)
            assert r.status_code == 200
            return time.monotonic() - t

        calls = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.1)
        during = (await c.get("/metrics")).text
        latencies = sorted(await asyncio.gather(*calls))
        after = (await c.get("/metrics")).text
    assert metric(during, "vllm:num_requests_running", model_name="m") == 2.0
    assert metric(during, "vllm:num_requests_waiting", model_name="m") == 4.0
    reading = parse_metrics(during)  # the agent reads the fake exactly as it reads vLLM
    assert (reading.running, reading.waiting) == (2.0, 4.0)
    # Two running sequences hold their prompts plus a few tokens each.
    assert 0 < metric(during, "vllm:kv_cache_usage_perc", model_name="m") < 0.01
    assert latencies[0] < 0.4
    assert latencies[-1] > 2.5 * latencies[0]  # the third wave waited for two others
    assert metric(after, "vllm:num_requests_waiting", model_name="m") == 0.0
    assert metric(after, "vllm:request_success_total", finished_reason="length") == 6.0
    assert metric(after, "vllm:generation_tokens_total") == 60.0
    assert metric(after, "vllm:e2e_request_latency_seconds_count") == 6.0
    # every token after a request's first is one inter-token interval, about a step apart
    itl_n = metric(after, "vllm:inter_token_latency_seconds_count")
    itl_s = metric(after, "vllm:inter_token_latency_seconds_sum")
    assert itl_n == 60.0 - 6.0
    assert 0.015 < itl_s / itl_n < 0.05, itl_s / itl_n
    assert metric(after, "vllm:inter_token_latency_seconds_bucket", le="+Inf") == itl_n
    assert parse_metrics(after).decode_steps == (itl_n, itl_s)


async def test_full_queue_answers_503() -> None:
    async with fake(max_running=1, max_queue=1, ttft_ms=50, tpot_ms=50) as (_, c):
        calls = [
            asyncio.create_task(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}))
            for _ in range(3)
        ]
        codes = sorted(r.status_code for r in await asyncio.gather(*calls))
        m = (await c.get("/metrics")).text
    assert codes == [200, 200, 503]
    assert metric(m, "aixds_fake_rejected_total", reason="overloaded") == 1.0


async def test_control_error_rate() -> None:
    async with fake(ttft_ms=0, tpot_ms=0.1, seed=7) as (_, c):
        req = {**CHAT, "max_tokens": 1}
        r = await c.post("/control", json={"error_rate": 1.0})
        assert r.status_code == 200 and r.json()["error_rate"] == 1.0
        bad = await c.post("/v1/chat/completions", json=req)
        assert bad.status_code == 500
        assert bad.json()["error"]["type"] == "InternalServerError"
        assert bad.headers["x-replica"] == "r-1"

        await c.post("/control", json={"error_rate": 0.3})
        codes = [(await c.post("/v1/chat/completions", json=req)).status_code for _ in range(200)]
        assert set(codes) == {200, 500}
        assert 0.2 <= codes.count(500) / len(codes) <= 0.4

        await c.post("/control", json={"error_rate": 0})
        assert (await c.post("/v1/chat/completions", json=req)).status_code == 200


async def test_control_rejects_bad_documents_and_changes_nothing() -> None:
    async with fake() as (_, c):
        for doc in ({"speed": 2, "bogus": 1}, {"error_rate": 1.5}, {"stall": "yes"}):
            r = await c.post("/control", json=doc)
            assert r.status_code == 400, doc
        r = await c.post("/control", content=b"{oops")
        assert r.status_code == 400
        state = (await c.get("/control")).json()
    assert (state["speed"], state["error_rate"], state["stall"]) == (1.0, 0.0, False)


async def test_control_stall_and_speed() -> None:
    async with fake(ttft_ms=10, tpot_ms=10) as (_, c):
        await c.post("/control", json={"stall": True})
        call = asyncio.create_task(c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}))
        await asyncio.sleep(0.3)
        assert not call.done()  # a hung GPU: nothing progresses
        m = (await c.get("/metrics")).text
        assert metric(m, "vllm:num_requests_running") == 1.0
        await c.post("/control", json={"stall": False, "speed": 4.0})
        r = await asyncio.wait_for(call, 2.0)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


async def test_client_hangup_frees_the_slot() -> None:
    async with fake(max_running=1, ttft_ms=5, tpot_ms=20) as (_, c):
        req = {"prompt": "x", "max_tokens": 1000, "stream": True}
        async with c.stream("POST", "/v1/completions", json=req) as r:
            async for _ in r.aiter_lines():
                break  # hang up after the first token
        for _ in range(100):
            if metric((await c.get("/metrics")).text, "vllm:num_requests_running") == 0.0:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the hung-up request still holds its slot")
        r2 = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r2.status_code == 200


async def test_load_time_then_ready() -> None:
    async with fake(load_time_s=0.4) as (_, c):
        assert (await c.get("/health")).status_code == 503
        assert (await c.get("/v1/models")).json()["data"] == []
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503
        await asyncio.sleep(0.5)
        assert (await c.get("/health")).status_code == 200
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["m"]
        # A reload through /control, with a new version once it is done.
        await c.post("/control", json={"load_time": 0.2, "version": "v2"})
        assert (await c.get("/health")).status_code == 503
        await asyncio.sleep(0.3)
        assert (await c.get("/v1/models")).json()["data"][0]["aixds_version"] == "v2"


def test_cli_serves_and_exits_0_on_sigterm(procs: Procs) -> None:
    port = free_port()
    p = procs.aixds(
        "fake-llm", "fake-llm", "--listen", f"127.0.0.1:{port}", "--model", "m",
        "--version", "v3", "--speed", "5",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, 15, what="fake-llm up")
    r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert r.status_code == 200
    assert r.headers["x-replica"] == f"127.0.0.1:{port}"
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["aixds_version"] == "v3"
    p.kill(signal.SIGTERM)
    assert p.popen is not None
    assert p.popen.wait(10) == 0
