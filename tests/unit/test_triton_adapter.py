"""The Triton adapter against recorded outputs (tests/fixtures/triton/).

Fixtures follow Triton's repository index (POST /v2/repository/index) and its metrics
text, alone and with the TensorRT-LLM backend's ``nv_trt_llm_*`` gauges, and bad variants.
"""

from __future__ import annotations

import json

import httpx
import pytest

from controlplane.agent.servers.adapter import UNREACHABLE
from controlplane.agent.servers.scrape import MetricsError
from controlplane.agent.servers.triton import (
    TritonAdapter,
    default_metrics_url,
    parse_index,
    parse_metrics,
)
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind
from tests.unit.adapter_support import Route, fixture, fixture_json, mock_client, publishable

K = "triton"
R, L, U = ModelState.READY, ModelState.LOADING, ModelState.UNLOADING


def test_index_keeps_present_models_with_their_versions() -> None:
    got = parse_index(fixture_json(K, "index.json"), {})
    assert got == (
        ModelInfo("densenet_onnx", "1", R),
        ModelInfo("ensemble", "1", R),
        ModelInfo("llama3", "2", R),
        ModelInfo("postprocessing", "1", L),
        ModelInfo("resnet50", "3", U),
        ModelInfo("tensorrt_llm", "1", R),
    )


def test_configured_version_wins_and_merges_triton_versions() -> None:
    doc = [
        {"name": "m", "version": "1", "state": "LOADING"},
        {"name": "m", "version": "2", "state": "READY"},
        {"name": "x", "state": "READY"},
    ]
    assert parse_index(doc, {"m": "blue"}) == (
        ModelInfo("m", "blue", R),
        ModelInfo("x", "default", R),
    )


@pytest.mark.parametrize("doc", [fixture_json(K, "index_error.json"), None, "x"])
def test_not_an_index(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_index(doc, {})


def test_index_skips_junk_entries() -> None:
    doc = [
        "junk",
        {"name": 3, "state": "READY"},
        {"name": "a", "state": "WEIRD"},
        {"name": "b", "state": "ready"},
    ]
    assert parse_index(doc, {}) == (ModelInfo("b", "default", R),)


def test_plain_triton_metrics_have_pending_only() -> None:
    r = parse_metrics(fixture(K, "metrics.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage, r.problems) == (9.0, 0.0, 0.0, ())


def test_trtllm_backend_metrics() -> None:
    r = parse_metrics(fixture(K, "metrics_trtllm.txt"))
    assert r.waiting == 5.0  # 1 pending in Triton + 4 waiting in the batch manager
    assert r.running == 34.0  # active
    assert r.kv_cache_usage == pytest.approx(3042 / 6240)
    assert r.problems == ()


def test_kv_falls_back_to_fraction_when_blocks_make_no_sense() -> None:
    r = parse_metrics(fixture(K, "metrics_trtllm_fraction_only.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (0.0, 3.0, 0.25)


def test_bad_values_are_refused() -> None:
    r = parse_metrics(fixture(K, "metrics_bad.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, None, None)
    assert len(r.problems) == 3
    assert r.load() == LoadStats()


def test_garbage() -> None:
    with pytest.raises(MetricsError):
        parse_metrics(fixture(K, "garbage.txt"))


def test_default_metrics_url() -> None:
    assert default_metrics_url("http://10.0.0.5:8000") == "http://10.0.0.5:8002/metrics"


def server(index: str, metrics: str) -> dict[str, Route]:
    def idx(req: httpx.Request) -> httpx.Response:
        assert json.loads(req.content) == {}
        return httpx.Response(200, content=index.encode())

    return {"POST /v2/repository/index": idx, "GET /metrics": (200, metrics)}


async def test_probe() -> None:
    client = mock_client(server(fixture(K, "index.json"), fixture(K, "metrics_trtllm.txt")))
    a = TritonAdapter("http://h:8000", client, {"llama3": "v2"}, "http://h:8002/metrics")
    p = await a.probe()
    assert ModelInfo("llama3", "v2", R) in p.models and len(p.models) == 6
    assert p.load.running == 34.0
    assert a.kind is ServerKind.TRITON
    publishable(p, ServerKind.TRITON)


async def test_probe_error_index_publishes_no_models() -> None:
    client = mock_client({"POST /v2/repository/index": (500, fixture(K, "index_error.json"))})
    p = await TritonAdapter("http://h:8000", client, {}).probe()
    assert p.reachable and p.models == ()


async def test_probe_metrics_port_down_keeps_models() -> None:
    def handle(req: httpx.Request) -> httpx.Response:
        if req.url.port == 8002:
            raise httpx.ConnectError("refused", request=req)
        return httpx.Response(200, content=fixture(K, "index.json").encode())

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    p = await TritonAdapter("http://h:8000", client, {}).probe()
    assert len(p.models) == 6 and p.load == LoadStats()


async def test_probe_down() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    assert await TritonAdapter("http://h:8000", client, {}).probe() == UNREACHABLE
