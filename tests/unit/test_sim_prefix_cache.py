"""The fake server's prefix cache: chained block hashes, the block pool, the engine's reuse
and eviction under KV pressure, the switch, the metrics and the response's usage.

Engine tests run the real ``Engine`` on the test's event loop. With ``ttft_ms`` 0 and
``max_tokens`` 1 a request ends when its prefill does, so most of them need no decode
timer; times are the loop's clock, as the engine records them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.sim.app import FakeLLM, FakeLLMConfig
from controlplane.sim.control import parse_control
from controlplane.sim.engine import Engine, Knobs, Seq
from controlplane.sim.fake_llm import config_from_args, configure_parser
from controlplane.sim.metrics import ServerMetrics
from controlplane.sim.openai_format import parse_request
from controlplane.sim.prefix_cache import CHARS_PER_TOKEN, BlockPool, block_hashes

B = 16
"""Tokens per block in these tests (vLLM's default)."""


def text(tokens: int, fill: str = "a") -> str:
    """A prompt string of exactly ``tokens`` tokens, all made of ``fill``."""
    return fill * (CHARS_PER_TOKEN * tokens)


# -- hashing -----------------------------------------------------------------------------------
def test_full_blocks_hash_as_a_chain() -> None:
    base = text(3 * B, "a")
    same_start = text(2 * B, "a") + text(B + 5, "b")
    assert len(block_hashes(base)) == 3
    assert len(block_hashes(text(B - 1))) == 0  # a partial block is never cached
    assert len(same_start) // CHARS_PER_TOKEN == 3 * B + 5
    assert block_hashes(same_start)[:2] == block_hashes(base)[:2]
    assert block_hashes(same_start)[2] != block_hashes(base)[2]
    # A different first block changes every later hash, even where the tokens agree.
    other_head = text(B, "z") + text(2 * B, "a")
    assert not set(block_hashes(other_head)) & set(block_hashes(base))
    assert not set(block_hashes(base, salt="sql-lora")) & set(block_hashes(base))


def test_tokenization_counts_as_before_and_shares_real_prefixes() -> None:
    def req(doc: dict[str, Any], chat: bool = True) -> Any:
        body = json.dumps(doc).encode()
        return parse_request(body, chat=chat, default_tokens=4, max_model_len=10**6)

    one = req({"messages": [{"role": "user", "content": "Say something, please."}]})
    assert one.prompt_tokens == 10  # 22 characters -> 6 tokens, + 4 of framing
    assert len(one.prompt) == CHARS_PER_TOKEN * one.prompt_tokens
    assert req({"prompt": "12345678"}, chat=False).prompt_tokens == 2
    assert req({"prompt": ""}, chat=False).prompt_tokens == 1
    assert req({"prompt": [5, 6, 7, 2**40, -1]}, chat=False).prompt_tokens == 5
    assert req({"prompt": ["ab", "cdefg"]}, chat=False).prompt_tokens == 3
    parts = {"role": "user", "content": [{"type": "text", "text": "abcde"}, "x", {}]}
    assert req({"messages": [parts]}).prompt_tokens == 4 + 2 + 1

    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    a = req({"messages": [system, {"role": "user", "content": "first question"}]})
    b = req({"messages": [system, {"role": "user", "content": "another one"}]})
    shared = (4 + len(system["content"]) // CHARS_PER_TOKEN) // B
    assert shared >= 18
    assert block_hashes(a.prompt)[:shared] == block_hashes(b.prompt)[:shared]
    as_user = req({"messages": [{**system, "role": "user"}, {"role": "user", "content": "x"}]})
    assert block_hashes(as_user.prompt)[0] != block_hashes(a.prompt)[0]  # the role counts


# -- the block pool ----------------------------------------------------------------------------
def test_pool_reuses_releases_tail_first_and_never_evicts_referenced_blocks() -> None:
    pool = BlockPool(B)
    pool.acquire((1, 2, 3))
    pool.acquire((1, 2))  # a second sequence shares the first two
    assert (pool.in_use, pool.cached) == (3, 0)
    assert pool.match((1, 2, 3, 4), limit=4) == (3, 0)
    assert pool.match((1, 2, 3), limit=2) == (2, 0)
    assert pool.match((9, 2), limit=2) == (0, 0)  # the chain starts at the first block
    pool.release((1, 2, 3))
    assert (pool.in_use, pool.cached) == (2, 1)  # 1 and 2 are still referenced
    pool.evict(0)
    assert (pool.in_use, pool.cached, pool.evictions) == (2, 0, 1)
    assert pool.match((1, 2, 3), limit=3) == (2, 0)  # 3 went, 1 and 2 could not
    pool.release((1, 2))
    assert pool.match((1, 2), limit=2) == (2, 2)  # cached, unreferenced
    pool.evict(1)
    assert pool.match((1, 2), limit=2) == (1, 1)  # the tail went first
    pool.acquire((1,))
    assert (pool.in_use, pool.cached) == (1, 0)
    pool.release((1,), keep=False)
    assert (pool.in_use, pool.cached) == (0, 0)
    assert pool.match((1,), limit=1) == (0, 0)


# -- the engine --------------------------------------------------------------------------------
def engine(**kw: Any) -> Engine:
    kw = {"ttft_ms": 0.0, "prefill_tps": 0.0, "tpot_ms": 10.0, **kw}
    return Engine(Knobs(**kw))


async def run(e: Engine, prompt: str, max_tokens: int = 1, salt: str = "") -> Seq:
    seq = e.submit(len(prompt) // CHARS_PER_TOKEN, max_tokens, e.block_hashes(prompt, salt))
    await asyncio.wait_for(seq.wait_done(), 5)
    return seq


async def test_a_shared_prefix_skips_prefill() -> None:
    e = engine(prefill_tps=20_000.0)
    prompt = text(2000)  # 0.1 s of prefill at 20,000 tokens/s
    first = await run(e, prompt)
    again = await run(e, prompt[: -CHARS_PER_TOKEN * 3] + "new question")
    assert (first.cached_tokens, again.cached_tokens) == (0, 1984)  # 124 whole blocks
    assert first.first_token_at is not None and again.first_token_at is not None
    ttft_first = first.first_token_at - first.arrived
    ttft_again = again.first_token_at - again.arrived
    assert ttft_first >= 0.099
    assert ttft_again < ttft_first / 2, (ttft_first, ttft_again)
    t = e.totals
    assert (t.prefix_queries, t.prefix_hits) == (4000, 1984)
    assert (t.prompt_tokens, t.prompt_tokens_cached) == (4000, 1984)


async def test_the_whole_prompt_cached_still_computes_its_last_token() -> None:
    e = engine()
    await run(e, text(4 * B))
    assert (await run(e, text(4 * B))).cached_tokens == 3 * B  # the last block is computed
    assert (await run(e, text(4 * B + 1))).cached_tokens == 4 * B


async def test_a_different_earlier_block_misses_everything_after_it() -> None:
    e = engine()
    await run(e, text(B, "a") + text(3 * B, "b"))
    assert (await run(e, text(B, "c") + text(3 * B, "b"))).cached_tokens == 0
    assert (await run(e, text(B, "a") + text(3 * B, "b"), salt="sql-lora")).cached_tokens == 0
    assert (await run(e, text(B, "a") + text(2 * B, "b") + text(1, "!"))).cached_tokens == 3 * B


async def test_kv_pressure_evicts_least_recently_used_blocks_tail_first() -> None:
    e = engine(kv_capacity_tokens=8 * B)
    a, b, c = text(4 * B, "a"), text(4 * B, "b"), text(2 * B, "c")
    await run(e, a)
    await run(e, b)
    assert (e.cache.cached, e.cache.in_use, e.kv_usage) == (8, 0, 0.0)  # cached is free KV
    await run(e, c)  # 2 blocks + 1 token: the two oldest blocks go, a's tail
    assert (e.cache.cached, e.cache.evictions) == (8, 2)
    assert e.cache.match(block_hashes(a), 4) == (2, 2)  # a's head is still there
    assert e.cache.match(block_hashes(b), 4) == (4, 4)  # b's blocks were all kept
    assert (await run(e, a)).cached_tokens == 2 * B
    # a's two recomputed blocks took the room of the least recently used: b's tail
    assert e.cache.match(block_hashes(b), 4) == (2, 2)


async def test_blocks_in_use_are_never_evicted_and_are_shared() -> None:
    e = engine(kv_capacity_tokens=100, tpot_ms=60_000.0)
    a = e.submit(4 * B, 1000, e.block_hashes(text(4 * B, "a")))
    await asyncio.sleep(0.01)  # prefilled: its 4 blocks are cached and in use
    assert (e.cache.in_use, e.kv_tokens) == (4, 4 * B + 1)
    other = e.submit(4 * B, 1, e.block_hashes(text(4 * B, "b")))
    assert e.waiting == 1  # no room, and a's blocks are not up for eviction
    assert e.cache.match(a.blocks, 4) == (4, 0)
    e.abort(other)
    same = e.submit(4 * B, 1000, e.block_hashes(text(4 * B, "a")))
    assert (e.running, same.cached_tokens) == (2, 3 * B)  # fits: it shares a's KV
    assert e.kv_tokens == 4 * B + 1 + B
    await asyncio.sleep(0.01)  # its last block turns out to be a's too: held once
    assert e.kv_tokens == 4 * B + 2
    e.close()
    assert (e.kv_tokens, e.cache.in_use, e.cache.cached) == (0, 0, 4)


async def test_switched_off_nothing_is_looked_up_or_kept() -> None:
    e = engine(prefix_caching=False)
    assert e.block_hashes(text(4 * B)) == ()
    blocks = block_hashes(text(4 * B))
    for _ in range(2):
        seq = e.submit(4 * B, 1, blocks)
        await asyncio.wait_for(seq.wait_done(), 5)
        assert seq.cached_tokens == 0
    assert (e.cache.cached, e.totals.prefix_queries, e.totals.prefix_hits) == (0, 0, 0)
    e.knobs.prefix_caching = True
    e.poke()
    await run(e, text(4 * B))
    assert e.cache.cached == 4
    e.knobs.prefix_caching = False
    e.poke()  # turning it off drops what nobody uses
    assert e.cache.cached == 0


# -- metrics, usage, switches ------------------------------------------------------------------
def samples(text_: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text_)
        for s in fam.samples
    }


async def test_metrics_use_vllm_names_and_count_tokens() -> None:
    m = ServerMetrics("llama")
    e = Engine(Knobs(ttft_ms=0.0, prefill_tps=0.0), on_finish=m.on_finish)
    m.watch(e)
    await run(e, text(100))
    await run(e, text(100))
    got = samples(m.render().decode())
    lv = (("engine", "0"), ("model_name", "llama"))
    assert got[("vllm:prefix_cache_queries_total", lv)] == 200.0
    assert got[("vllm:prefix_cache_hits_total", lv)] == 96.0
    assert got[("vllm:prompt_tokens_cached_total", lv)] == 96.0
    assert got[("vllm:prompt_tokens_total", lv)] == 200.0
    by_source = "vllm:prompt_tokens_by_source_total"
    assert got[(by_source, (*lv, ("source", "local_compute")))] == 104.0
    assert got[(by_source, (*lv, ("source", "local_cache_hit")))] == 96.0
    assert got[(by_source, (*lv, ("source", "external_kv_transfer")))] == 0.0


@contextlib.asynccontextmanager
async def fake(**kw: Any) -> AsyncIterator[tuple[FakeLLM, httpx.AsyncClient]]:
    llm = FakeLLM(FakeLLMConfig(models=("m",), replica_id="r-1", ttft_ms=0, tpot_ms=1, **kw))
    try:
        transport = httpx.ASGITransport(app=llm.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://f", timeout=5) as c:
            yield llm, c
    finally:
        llm.close()


async def test_usage_reports_cached_tokens_json_and_stream() -> None:
    system = {"role": "system", "content": "Answer briefly and precisely. " * 30}
    body = {"messages": [system, {"role": "user", "content": "hi"}], "max_tokens": 2}
    async with fake() as (_, c):
        first = (await c.post("/v1/chat/completions", json=body)).json()["usage"]
        second = (await c.post("/v1/chat/completions", json=body)).json()["usage"]
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        r = await c.post("/v1/chat/completions", json=stream)
        state = (await c.get("/control")).json()
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = (first["prompt_tokens"] - 1) // B * B
    assert second["prompt_tokens_details"] == {"cached_tokens": cached}
    assert f'"prompt_tokens_details":{{"cached_tokens":{cached}}}' in r.text
    assert state["prefix_caching"] is True and state["block_size"] == B
    assert state["cached_blocks"] == first["prompt_tokens"] // B


async def test_switches_cli_flag_and_control() -> None:
    p = argparse.ArgumentParser()
    configure_parser(p)
    base = ["--listen", "127.0.0.1:0", "--model", "m"]
    assert config_from_args(p.parse_args(base))[0].prefix_caching is True
    off = config_from_args(p.parse_args([*base, "--no-enable-prefix-caching"]))[0]
    assert off.prefix_caching is False
    assert config_from_args(p.parse_args([*base, "--block-size", "32"]))[0].block_size == 32
    with pytest.raises(SystemExit):
        p.parse_args([*base, "--block-size", "0"])
    assert parse_control({"prefix_caching": False}) == {"prefix_caching": False}
    body = {"prompt": "x" * 400, "max_tokens": 1}
    async with fake(prefix_caching=False) as (_, c):
        for _ in range(2):
            r = await c.post("/v1/completions", json=body)
            assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
        await c.post("/control", json={"prefix_caching": True})
        await c.post("/v1/completions", json=body)
        r = await c.post("/v1/completions", json=body)
        assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 96}
