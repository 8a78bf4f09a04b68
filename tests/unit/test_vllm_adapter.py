"""The vLLM adapter: metrics and model-list parsing from fixtures, and probe states.

Fixtures in tests/fixtures/vllm/ follow the text vLLM's /metrics and /v1/models serve
(V1 engine with an ``engine`` label, the V0 names, both kv names during the rename, two
data-parallel engines) and broken variants (missing metric, NaN, absurd values, HTML).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from controlplane.agent.servers.adapter import UNREACHABLE
from controlplane.agent.servers.vllm import (
    MetricsError,
    VllmAdapter,
    parse_metrics,
    parse_models,
)
from controlplane.fleet.codec import decode_record, encode_record
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ReplicaRecord, ServerKind

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- /metrics --------------------------------------------------------------------------------
def test_v1_metrics_with_engine_label() -> None:
    r = parse_metrics(fixture("v1_engine.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (3.0, 7.0, 0.4375)
    assert r.problems == ()
    assert r.load() == LoadStats(queue_waiting=3.0, running=7.0, kv_cache_usage=0.4375)
    assert r.generated_tokens == 204817.0


def test_inter_token_histogram_is_the_speed_source_newest_name_first() -> None:
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 0',
        "# TYPE vllm:time_per_output_token_seconds histogram",
        'vllm:time_per_output_token_seconds_count{engine="0",model_name="m"} 9',
        'vllm:time_per_output_token_seconds_sum{engine="0",model_name="m"} 9.5',
    ]
    assert parse_metrics("\n".join(lines)).decode_steps == (9.0, 9.5)  # vLLM < 0.11
    lines += [
        "# TYPE vllm:inter_token_latency_seconds histogram",
        'vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 120',
        'vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 2.5',
        'vllm:inter_token_latency_seconds_count{engine="1",model_name="m"} 80',
        'vllm:inter_token_latency_seconds_sum{engine="1",model_name="m"} 1.5',
    ]
    assert parse_metrics("\n".join(lines)).decode_steps == (200.0, 4.0)
    half = [x for x in lines if "inter_token_latency_seconds_sum" not in x]
    assert parse_metrics("\n".join(half)).decode_steps is None  # no sum: not a measurement


def test_no_generation_counter_is_no_problem() -> None:
    r = parse_metrics(fixture("v0_legacy.txt"))
    assert r.generated_tokens is None and r.problems == ()


def test_v0_metrics_use_deprecated_gpu_cache_name() -> None:
    r = parse_metrics(fixture("v0_legacy.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (12.0, 4.0, 0.91)
    assert r.problems == ()


def test_both_kv_names_are_not_added_up() -> None:
    r = parse_metrics(fixture("both_kv_names.txt"))
    assert r.kv_cache_usage == 0.25
    assert (r.waiting, r.running) == (0.0, 2.0)


def test_data_parallel_engines_sum_counts_and_average_kv() -> None:
    r = parse_metrics(fixture("data_parallel.txt"))
    assert (r.waiting, r.running) == (3.0, 8.0)
    assert r.kv_cache_usage == pytest.approx(0.4)
    assert r.generated_tokens == 1500.0


def test_missing_metric_is_reported_and_counts_as_zero() -> None:
    r = parse_metrics(fixture("missing_kv.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (0.0, 1.0, None)
    assert r.problems == ("vllm:kv_cache_usage_perc missing",)
    assert r.load().kv_cache_usage == 0.0


def test_nan_is_never_published() -> None:
    r = parse_metrics(fixture("nan_waiting.txt"))
    assert r.waiting is None
    assert (r.running, r.kv_cache_usage) == (6.0, 0.5)
    assert len(r.problems) == 1 and "vllm:num_requests_waiting" in r.problems[0]
    assert "nan" in r.problems[0]
    load = r.load()
    assert all(math.isfinite(v) for v in (load.queue_waiting, load.running, load.kv_cache_usage))


def test_absurd_negative_and_percent_scale_values_are_rejected() -> None:
    r = parse_metrics(fixture("absurd_values.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, None, None)
    assert len(r.problems) == 3
    # Whatever the server said, the record still passes the codec's range checks.
    rec = ReplicaRecord(
        replica_id="n/vllm-1",
        node="n",
        region="r",
        zone="z",
        address="127.0.0.1",
        port=1,
        server_kind=ServerKind.VLLM,
        models=(),
        load=r.load(),
        timestamp=1.0,
    )
    assert decode_record(encode_record(rec)).load == LoadStats()


def test_inf_is_rejected() -> None:
    r = parse_metrics('vllm:num_requests_running{model_name="m"} +Inf\n')
    assert r.running is None


@pytest.mark.parametrize(
    "text", [fixture("garbage.txt"), "garbage", '{"running": 3}', 'vllm:x{a="b" 1\n']
)
def test_garbage_raises_metrics_error(text: str) -> None:
    with pytest.raises(MetricsError):
        parse_metrics(text)


def test_empty_text_has_every_metric_missing() -> None:
    r = parse_metrics("")
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, None, None)
    assert len(r.problems) == 3


# -- /v1/models ------------------------------------------------------------------------------
def test_models_from_vllm_list_include_lora_adapters() -> None:
    doc = json.loads(fixture("models.json"))
    assert parse_models(doc, {}) == ((LLAMA, "default"), ("sql-lora", "default"))


def test_model_version_flag_beats_aixds_version_beats_default() -> None:
    doc = {
        "object": "list",
        "data": [
            {"id": "a", "aixds_version": "v2"},
            {"id": "b", "aixds_version": "v3"},
            {"id": "c"},
            {"id": "d", "aixds_version": 7},
        ],
    }
    got = parse_models(doc, {"b": "pinned"})
    assert got == (("a", "v2"), ("b", "pinned"), ("c", "default"), ("d", "default"))


def test_models_skip_bad_entries_and_duplicates() -> None:
    doc = {"data": [{"id": "a"}, "junk", {"id": ""}, {"id": 3}, {"no": "id"}, {"id": "a"}]}
    assert parse_models(doc, {}) == (("a", "default"),)


@pytest.mark.parametrize("doc", [[], {"object": "list"}, {"data": "x"}, None])
def test_not_a_model_list_raises(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_models(doc, {})


# -- probe() through a mock transport ------------------------------------------------------
Handler = Callable[[httpx.Request], httpx.Response]


def server(health: int, models: object, metrics: str | None) -> Handler:
    def handle(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/health":
            return httpx.Response(health)
        if req.url.path == "/v1/models":
            return httpx.Response(200, json=models)
        if req.url.path == "/metrics" and metrics is not None:
            return httpx.Response(200, text=metrics)
        return httpx.Response(404)

    return handle


def adapter(handler: Handler, versions: dict[str, str] | None = None) -> VllmAdapter:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return VllmAdapter("http://127.0.0.1:8000/", client, versions or {})


async def test_probe_ready_server() -> None:
    a = adapter(server(200, json.loads(fixture("models.json")), fixture("v1_engine.txt")))
    p = await a.probe()
    assert p.reachable
    assert p.models == (
        ModelInfo(LLAMA, "default", ModelState.READY),
        ModelInfo("sql-lora", "default", ModelState.READY),
    )
    assert p.load == LoadStats(queue_waiting=3.0, running=7.0, kv_cache_usage=0.4375)
    assert a.kind is ServerKind.VLLM


async def test_probe_loading_server_keeps_names_it_saw_before() -> None:
    state = {"health": 200, "models": {"data": [{"id": "m", "aixds_version": "v1"}]}}

    def handle(req: httpx.Request) -> httpx.Response:
        return server(state["health"], state["models"], "")(req)  # type: ignore[arg-type]

    a = adapter(handle)
    assert (await a.probe()).models == (ModelInfo("m", "v1", ModelState.READY),)
    state["health"], state["models"] = 503, {"object": "list", "data": []}
    p = await a.probe()
    assert p.models == (ModelInfo("m", "v1", ModelState.LOADING),)
    assert p.load == LoadStats()


def metrics_text(generated: float, running: int) -> str:
    return "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="m"} 0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1',
            "# TYPE vllm:generation_tokens_total counter",
            f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {generated}',
            "",
        ]
    )


async def test_probe_measures_decode_speed_from_the_token_counter() -> None:
    state = {"generated": 0.0, "now": 100.0}

    def handle(req: httpx.Request) -> httpx.Response:
        text = metrics_text(state["generated"], 4)
        return server(200, {"data": [{"id": "m"}]}, text)(req)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    a = VllmAdapter(
        "http://127.0.0.1:8000", client, {}, reference_tps=20.0, clock=lambda: state["now"]
    )
    assert (await a.probe()).speed is None  # one scrape: nothing to compare with yet
    for _ in range(40):  # 4 sequences at 10 tokens/s each: half the reference rate
        state["now"] += 0.25
        state["generated"] += 4 * 10.0 * 0.25
        p = await a.probe()
    assert p.speed == pytest.approx(1.25**-3)  # 0.51, the rung nearest 0.5
    assert p.load == LoadStats(queue_waiting=0.0, running=4.0, kv_cache_usage=0.1)


async def test_probe_measures_short_requests_from_the_inter_token_histogram() -> None:
    """Requests that start and end between two scrapes (0 running at each) still measure
    the speed; the token counter alone would not."""
    state = {"tokens": 0.0, "seconds": 0.0, "now": 100.0}

    def handle(req: httpx.Request) -> httpx.Response:
        text = metrics_text(state["tokens"], 0) + "\n".join(
            [
                "# TYPE vllm:inter_token_latency_seconds histogram",
                f'vllm:inter_token_latency_seconds_count{{model_name="m"}} {state["tokens"]}',
                f'vllm:inter_token_latency_seconds_sum{{model_name="m"}} {state["seconds"]}',
                "",
            ]
        )
        return server(200, {"data": [{"id": "m"}]}, text)(req)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    a = VllmAdapter(
        "http://127.0.0.1:8000", client, {}, reference_tps=20.0, clock=lambda: state["now"]
    )
    await a.probe()
    for _ in range(40):  # 10 tokens/s per sequence: half the reference rate
        state["now"] += 0.25
        state["tokens"] += 3
        state["seconds"] += 3 * 0.1
        p = await a.probe()
    assert p.speed == pytest.approx(1.25**-3)


async def test_probe_cold_loading_server_has_no_models() -> None:
    p = await adapter(server(503, {"data": []}, "")).probe()
    assert p.reachable and p.models == ()


async def test_probe_with_garbage_metrics_publishes_zero_load() -> None:
    p = await adapter(server(200, {"data": [{"id": "m"}]}, fixture("garbage.txt"))).probe()
    assert p.models == (ModelInfo("m", "default", ModelState.READY),)
    assert p.load == LoadStats()


async def test_probe_with_broken_health_has_no_models() -> None:
    p = await adapter(server(500, {"data": [{"id": "m"}]}, "")).probe()
    assert p.reachable and p.models == ()


async def test_probe_unreachable_server() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    assert await adapter(refuse).probe() == UNREACHABLE
