"""The SGLang adapter against recorded outputs (tests/fixtures/sglang/).

Fixtures follow SGLang's documented /metrics text (with and without the per-rank labels of
newer releases), /v1/models and /get_model_info, and broken variants.
"""

from __future__ import annotations

import pytest

from controlplane.agent.servers.adapter import UNREACHABLE
from controlplane.agent.servers.scrape import MetricsError
from controlplane.agent.servers.sglang import SglangAdapter, model_from_info, parse_metrics
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind
from tests.unit.adapter_support import (
    fixture,
    fixture_json,
    mock_client,
    publishable,
    refusing_client,
)

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
K = "sglang"


def test_documented_metrics() -> None:
    r = parse_metrics(fixture(K, "metrics.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage, r.problems) == (5.0, 12.0, 0.28, ())
    assert r.generated_tokens == 7.557572e06
    assert r.prefix_cache is None  # prompt tokens counted, cached ones not: no pair
    assert r.prefix_hit_rate == pytest.approx(0.0075, abs=1e-4)


def test_tensor_parallel_ranks_count_once_data_parallel_ranks_add_up() -> None:
    r = parse_metrics(fixture(K, "metrics_ranks.txt"))
    assert (r.waiting, r.running) == (3.0, 13.0)
    assert r.kv_cache_usage == pytest.approx(0.4)


def test_nan_token_usage_is_not_published() -> None:
    r = parse_metrics(fixture(K, "metrics_nan.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (0.0, 3.0, None)
    assert "sglang:token_usage has nan" in r.problems[0]
    assert r.load() == LoadStats(queue_waiting=0.0, running=3.0, kv_cache_usage=0.0)


def test_absurd_values_are_all_refused() -> None:
    r = parse_metrics(fixture(K, "metrics_absurd.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, None, None)
    assert len(r.problems) == 3
    assert r.load() == LoadStats()


def test_missing_queue_gauge_is_reported() -> None:
    r = parse_metrics(fixture(K, "metrics_missing.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, 2.0, 0.05)
    assert r.problems == ("sglang:num_queue_reqs missing",)


def test_html_is_not_metrics() -> None:
    with pytest.raises(MetricsError):
        parse_metrics(fixture(K, "garbage.txt"))


def test_model_info() -> None:
    assert model_from_info(fixture_json(K, "model_info.json")) == LLAMA
    assert model_from_info({"model_path": ""}) is None
    assert model_from_info(["x"]) is None


def routes(health: int = 200, models: str | None = None, metrics: str | None = None) -> dict:
    r: dict = {"GET /health": (health, "")}
    if models is not None:
        r["GET /v1/models"] = (200, models)
    if metrics is not None:
        r["GET /metrics"] = (200, metrics)
    r["GET /get_model_info"] = (200, fixture(K, "model_info.json"))
    return r


async def test_probe_ready() -> None:
    a = SglangAdapter(
        "http://h:30000",
        mock_client(routes(200, fixture(K, "models.json"), fixture(K, "metrics.txt"))),
        {},
    )
    p = await a.probe()
    assert p.models == (ModelInfo(LLAMA, "default", ModelState.READY),)
    # no cached-token counter in this version: the scheduler's own hit-rate gauge, rounded
    load = LoadStats(5.0, 12.0, 0.28, prefix_cache_hit_rate=0.008)
    assert p.load == load
    assert a.kind is ServerKind.SGLANG
    publishable(p, ServerKind.SGLANG)


async def test_probe_names_from_model_info_when_v1_models_is_missing() -> None:
    a = SglangAdapter("http://h:30000", mock_client(routes(200, None, None)), {LLAMA: "v7"})
    p = await a.probe()
    assert p.models == (ModelInfo(LLAMA, "v7", ModelState.READY),)
    assert p.load == LoadStats()  # no --enable-metrics: 0, and said once in the log


async def test_probe_loading_and_down() -> None:
    p = await SglangAdapter("http://h:1", mock_client(routes(503, '{"data": []}')), {}).probe()
    assert p.reachable and p.models[0].state is ModelState.LOADING  # named by /get_model_info
    assert await SglangAdapter("http://h:1", refusing_client(), {}).probe() == UNREACHABLE
