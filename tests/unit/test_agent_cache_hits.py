"""The agent's prefix-cache hit rate (``servers.cache_hits``): windowed from two or more
scrapes of the server's counters, read from vLLM (every name generation) and SGLang, and
published in the record; also against the fake server itself, in-process."""

from __future__ import annotations

import httpx
import pytest

from controlplane.agent.servers.cache_hits import PrefixHitRate
from controlplane.agent.servers.sglang import parse_metrics as parse_sglang
from controlplane.agent.servers.vllm import VllmAdapter, parse_metrics
from controlplane.fleet.model import LoadStats, ServerKind
from controlplane.sim.app import FakeLLM, FakeLLMConfig
from tests.unit.adapter_support import publishable


def test_rate_is_the_share_of_new_lookups_that_hit() -> None:
    r = PrefixHitRate(window_s=10.0)
    assert r.update(0.0, 1000.0, 4000.0) is None  # one scrape: totals say nothing about now
    assert r.update(1.0, 1000.0, 4000.0) is None  # nothing looked up yet
    assert r.update(2.0, 1750.0, 5000.0) == 0.75
    assert r.update(3.0, 1750.0, 5000.0) == 0.75  # idle: the last rate stays
    assert r.update(4.0, 1750.0, 6000.0) == 0.375  # 750 of 2000 within the window
    assert r.update(5.0, 10.0, 100.0) == 0.375  # counters went back (a restart): new window
    assert r.update(6.0, 60.0, 200.0) == 0.5


def test_the_window_forgets_old_lookups() -> None:
    r = PrefixHitRate(window_s=2.0)
    t, hits, queries = 0.0, 0.0, 0.0
    r.update(t, hits, queries)
    for _ in range(8):  # everything hits for two seconds
        t, hits, queries = t + 0.25, hits + 100, queries + 100
        r.update(t, hits, queries)
    assert r.rate == 1.0
    for _ in range(12):  # then nothing does, for three
        t, queries = t + 0.25, queries + 100
        r.update(t, hits, queries)
    assert r.rate == 0.0
    r2 = PrefixHitRate(window_s=2.0)
    r2.update(0.0, 0.0, 0.0)
    assert r2.update(30.0, 1.0, 3.0) == pytest.approx(0.333)  # sparse scrapes still count


def test_a_server_gauge_is_taken_as_it_is() -> None:
    r = PrefixHitRate()
    assert r.observe(0.81234) == 0.812
    assert r.observe(1.5) == 1.0


def vllm_text(hits: float, queries: float, prefix: str = "vllm:prefix_cache") -> str:
    lv = '{engine="0",model_name="m"}'
    return "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{lv} 2",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{lv} 0",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{lv} 0.25",
            f"# TYPE {prefix}_queries counter",
            f"{prefix}_queries_total{lv} {queries}",
            f"# TYPE {prefix}_hits counter",
            f"{prefix}_hits_total{lv} {hits}",
            "",
        ]
    )


def test_vllm_counters_current_older_and_v0_gauge() -> None:
    assert parse_metrics(vllm_text(30, 100)).prefix_cache == (30.0, 100.0)
    older = parse_metrics(vllm_text(3, 10, prefix="vllm:gpu_prefix_cache"))  # V1 before 0.9
    assert older.prefix_cache == (3.0, 10.0)
    assert parse_metrics(vllm_text(300, 100)).prefix_cache is None  # more hits than lookups
    assert parse_metrics(vllm_text(float("nan"), 100)).prefix_cache is None
    v0 = "# TYPE vllm:gpu_prefix_cache_hit_rate gauge\nvllm:gpu_prefix_cache_hit_rate 0.4\n"
    assert parse_metrics(v0).prefix_hit_rate == 0.4
    unknown = parse_metrics(v0.replace("0.4", "-1.0"))  # V0 before its first lookup
    assert unknown.prefix_hit_rate is None and "prefix" not in " ".join(unknown.problems)
    assert parse_metrics(vllm_text(1, 2)).problems == ()


def test_sglang_counters_sum_every_cache_source() -> None:
    text = "\n".join(
        [
            "# TYPE sglang:prompt_tokens counter",
            'sglang:prompt_tokens_total{model_name="m"} 1000',
            "# TYPE sglang:cached_tokens counter",
            'sglang:cached_tokens_total{cache_source="device",model_name="m"} 300',
            'sglang:cached_tokens_total{cache_source="host",model_name="m"} 100',
            "# TYPE sglang:cache_hit_rate gauge",
            'sglang:cache_hit_rate{model_name="m"} 0.9',
            "",
        ]
    )
    r = parse_sglang(text)
    assert r.prefix_cache == (400.0, 1000.0)  # the counters win over the last-batch gauge


async def test_adapter_publishes_the_rate_from_two_scrapes() -> None:
    state = {"hits": 0.0, "queries": 0.0, "now": 50.0}

    def handle(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/health":
            return httpx.Response(200)
        if req.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(200, text=vllm_text(state["hits"], state["queries"]))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    a = VllmAdapter("http://127.0.0.1:8000", client, {}, clock=lambda: state["now"])
    first = await a.probe()
    assert first.load == LoadStats(0.0, 2.0, 0.25)  # no rate yet
    assert publishable(first, ServerKind.VLLM).load.prefix_cache_hit_rate is None
    state["now"], state["hits"], state["queries"] = 51.0, 900.0, 1200.0
    p = await a.probe()
    assert p.load == LoadStats(0.0, 2.0, 0.25, prefix_cache_hit_rate=0.75)
    assert publishable(p, ServerKind.VLLM).load.prefix_cache_hit_rate == 0.75


async def test_the_agent_reads_the_fake_servers_hit_rate() -> None:
    llm = FakeLLM(FakeLLMConfig(models=("m",), replica_id="r", ttft_ms=0, tpot_ms=1))
    now = [0.0]
    try:
        transport = httpx.ASGITransport(app=llm.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://f") as c:
            a = VllmAdapter("http://f", c, {}, clock=lambda: now[0])
            await a.probe()
            body = {"prompt": "The same long instructions. " * 40, "max_tokens": 1}
            for _ in range(2):
                assert (await c.post("/v1/completions", json=body)).status_code == 200
            now[0] = 1.0
            p = await a.probe()
    finally:
        llm.close()
    tokens = (len(body["prompt"]) + 3) // 4  # type: ignore[arg-type]
    hit = (tokens - 1) // 16 * 16
    assert p.load.prefix_cache_hit_rate == pytest.approx(hit / (2 * tokens), abs=1e-3)
