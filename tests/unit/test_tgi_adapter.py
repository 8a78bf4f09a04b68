"""The TGI adapter against recorded outputs (tests/fixtures/tgi/): /info, /metrics, /health."""

from __future__ import annotations

import httpx
import pytest

from controlplane.agent.servers.adapter import UNREACHABLE
from controlplane.agent.servers.scrape import MetricsError
from controlplane.agent.servers.tgi import TgiAdapter, model_from_info, parse_metrics
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind
from tests.unit.adapter_support import (
    Route,
    fixture,
    fixture_json,
    mock_client,
    publishable,
    refusing_client,
)

K = "tgi"
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"


def test_queue_and_batch_and_no_kv() -> None:
    r = parse_metrics(fixture(K, "metrics.txt"))
    assert (r.waiting, r.running, r.kv_cache_usage, r.problems) == (7.0, 24.0, 0.0, ())
    assert r.decode_steps == (391022.0, 9384.5)  # method="decode" only, not prefill


def test_no_forward_histogram_is_no_problem() -> None:
    r = parse_metrics(fixture(K, "metrics_missing.txt"))
    assert r.decode_steps is None and "forward" not in " ".join(r.problems)


def decode_metrics(steps: float, seconds: float) -> str:
    return "\n".join(
        [
            "# TYPE tgi_queue_size gauge",
            "tgi_queue_size 0",
            "# TYPE tgi_batch_current_size gauge",
            "tgi_batch_current_size 8",
            "# TYPE tgi_batch_forward_duration histogram",
            f'tgi_batch_forward_duration_bucket{{method="decode",le="+Inf"}} {steps}',
            f'tgi_batch_forward_duration_sum{{method="decode"}} {seconds}',
            f'tgi_batch_forward_duration_count{{method="decode"}} {steps}',
            "",
        ]
    )


async def test_probe_measures_speed_from_decode_step_time() -> None:
    state = {"steps": 1000.0, "seconds": 40.0, "now": 0.0}

    def metrics(_: object) -> httpx.Response:
        return httpx.Response(200, text=decode_metrics(state["steps"], state["seconds"]))

    routes: dict[str, Route] = {**server(200, fixture(K, "info.json"), ""), "GET /metrics": metrics}
    a = TgiAdapter("http://h:8080", mock_client(routes), {}, reference_tps=50.0,
                   clock=lambda: state["now"])  # fmt: skip
    assert (await a.probe()).speed is None
    for _ in range(40):  # 20 ms per decode step, stepping half of the time: 50 tokens/s
        state["now"] += 0.25
        state["steps"] += 0.25 * 0.5 / 0.020
        state["seconds"] += 0.25 * 0.5
        p = await a.probe()
    assert p.speed == 1.0
    for _ in range(40):  # steps now take 40 ms: half the speed
        state["now"] += 0.25
        state["steps"] += 0.25 * 0.5 / 0.040
        state["seconds"] += 0.25 * 0.5
        p = await a.probe()
    assert p.speed == pytest.approx(1.25**-3)
    publishable(p, ServerKind.TGI)


def test_missing_queue_gauge() -> None:
    r = parse_metrics(fixture(K, "metrics_missing.txt"))
    assert (r.waiting, r.running) == (None, 0.0)
    assert r.problems == ("tgi_queue_size missing",)


def test_nan_and_absurd_values_are_refused() -> None:
    r = parse_metrics(fixture(K, "metrics_nan.txt"))
    assert (r.waiting, r.running) == (None, 3.0)
    r = parse_metrics(fixture(K, "metrics_absurd.txt"))
    assert (r.waiting, r.running) == (None, None)
    assert r.load() == LoadStats()


def test_garbage() -> None:
    with pytest.raises(MetricsError):
        parse_metrics(fixture(K, "garbage.txt"))


def test_info() -> None:
    assert model_from_info(fixture_json(K, "info.json")) == MISTRAL
    assert model_from_info({"model_id": None}) is None


def server(health: int, info: str, metrics: str) -> dict[str, Route]:
    return {"GET /health": (health, ""), "GET /info": (200, info), "GET /metrics": (200, metrics)}


async def test_probe_ready() -> None:
    client = mock_client(server(200, fixture(K, "info.json"), fixture(K, "metrics.txt")))
    a = TgiAdapter("http://h:8080", client, {MISTRAL: "v3"})
    p = await a.probe()
    assert p.models == (ModelInfo(MISTRAL, "v3", ModelState.READY),)
    assert p.load == LoadStats(queue_waiting=7.0, running=24.0, kv_cache_usage=0.0)
    assert a.kind is ServerKind.TGI
    publishable(p, ServerKind.TGI)


async def test_probe_garbage_metrics_still_publishes_the_model_with_zero_load() -> None:
    client = mock_client(server(200, fixture(K, "info.json"), fixture(K, "garbage.txt")))
    p = await TgiAdapter("http://h:8080", client, {}).probe()
    assert p.models == (ModelInfo(MISTRAL, "default", ModelState.READY),)
    assert p.load == LoadStats()


@pytest.mark.parametrize(("health", "info"), [(503, fixture(K, "info.json")), (200, "{}")])
async def test_probe_unhealthy_or_nameless_publishes_no_models(health: int, info: str) -> None:
    client = mock_client(server(health, info, fixture(K, "metrics.txt")))
    p = await TgiAdapter("http://h:8080", client, {}).probe()
    assert p.reachable and p.models == ()


async def test_probe_down() -> None:
    assert await TgiAdapter("http://h:1", refusing_client(), {}).probe() == UNREACHABLE
