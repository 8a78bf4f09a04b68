"""The TensorRT-LLM adapter (trtllm-serve) against recorded /metrics JSON (fixtures/trtllm/)."""

from __future__ import annotations

import json

import httpx
import pytest

from controlplane.agent.servers.trtllm import TrtllmAdapter, parse_stats
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind
from tests.unit.adapter_support import Route, fixture, fixture_json, mock_client, publishable

K = "trtllm"
TINY = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


def test_newest_iteration_counts() -> None:
    r = parse_stats(fixture_json(K, "metrics.json"))
    assert (r.waiting, r.running, r.problems) == (3.0, 9.0, ())
    assert r.kv_cache_usage == pytest.approx(25314 / 101256)


def test_only_pure_decode_iterations_time_the_decode_step() -> None:
    r = parse_stats(fixture_json(K, "metrics.json"))  # iteration 1841 also ran a prefill
    assert r.decode_steps == (1.0, pytest.approx(0.01421))


def test_no_iteration_since_last_probe_is_idle() -> None:
    r = parse_stats(fixture_json(K, "metrics_empty.json"))
    assert r.load() == LoadStats() and r.problems == ()


def test_nan_is_refused() -> None:
    r = parse_stats(json.loads(fixture(K, "metrics_nan.json")))  # Python's json reads NaN
    assert (r.waiting, r.running, r.kv_cache_usage) == (2.0, None, 0.1)
    assert "numActiveRequests" in r.problems[0]


def test_absurd_values_are_refused() -> None:
    r = parse_stats(fixture_json(K, "metrics_absurd.json"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, 4.0, None)
    assert len(r.problems) == 2


def test_missing_fields() -> None:
    r = parse_stats(fixture_json(K, "metrics_missing.json"))
    assert (r.waiting, r.running, r.kv_cache_usage) == (None, 2.0, None)
    assert r.problems == ("numQueuedRequests missing", "kvCacheStats missing")


@pytest.mark.parametrize("doc", [{"iter": 1}, "x", None, [1, 2]])
def test_not_stats(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_stats(doc)


def server(metrics: str) -> dict[str, Route]:
    return {
        "GET /health": (200, ""),
        "GET /v1/models": (200, fixture(K, "models.json")),
        "GET /metrics": (200, metrics),
    }


async def test_probe() -> None:
    a = TrtllmAdapter("http://h:8000", mock_client(server(fixture(K, "metrics.json"))), {})
    p = await a.probe()
    assert p.models == (ModelInfo(TINY, "default", ModelState.READY),)
    assert (p.load.queue_waiting, p.load.running) == (3.0, 9.0)
    assert a.kind is ServerKind.TRTLLM
    publishable(p, ServerKind.TRTLLM)


async def test_probe_prometheus_text_instead_of_json_is_zero_load() -> None:
    a = TrtllmAdapter("http://h:8000", mock_client(server(fixture(K, "garbage.txt"))), {})
    p = await a.probe()
    assert p.models and p.load == LoadStats()


def iterations(n: int, step_ms: float) -> str:
    it = {
        "inflightBatchingStats": {"numContextRequests": 0, "numGenRequests": 4},
        "iterLatencyMS": step_ms,
        "numActiveRequests": 4,
        "numQueuedRequests": 0,
        "kvCacheStats": {"usedNumBlocks": 10, "maxNumBlocks": 100},
    }
    return json.dumps([it] * n)


async def test_probe_measures_speed_across_probes_of_drained_stats() -> None:
    state = {"now": 0.0, "step_ms": 20.0}

    def metrics(_: object) -> httpx.Response:  # /metrics hands out the iterations once
        return httpx.Response(200, text=iterations(12, state["step_ms"]))

    routes: dict[str, Route] = {**server("[]"), "GET /metrics": metrics}
    a = TrtllmAdapter("http://h:8000", mock_client(routes), {}, reference_tps=50.0,
                      clock=lambda: state["now"])  # fmt: skip
    assert (await a.probe()).speed is None
    for _ in range(30):  # 20 ms per decode step: 50 tokens/s per sequence
        state["now"] += 0.25
        p = await a.probe()
    assert p.speed == 1.0
    state["step_ms"] = 40.0
    for _ in range(30):
        state["now"] += 0.25
        p = await a.probe()
    assert p.speed == pytest.approx(1.25**-3)
