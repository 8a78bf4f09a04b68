"""Prometheus metrics of the fake server, under vLLM's own names and labels.

Gauges and counters are read from the engine when scraped (no cost per request); the
latency histograms are observed when a sequence ends. Each server has its own registry.

Prefix caching as vLLM V1 reports it (``vllm/v1/metrics/loggers.py``): the counters
``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` (prompt tokens looked up and
found at a request's first scheduling), and with the prompt-token counter
``vllm:prompt_tokens_cached`` and ``vllm:prompt_tokens_by_source{source}``
(``local_compute``, ``local_cache_hit``, ``external_kv_transfer``: always 0 here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from controlplane.sim.engine import ITL_BUCKETS, Engine, Finish, Seq

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_INDEX = "0"
"""vLLM V1 labels every series with its engine index; one engine here."""

# vLLM's bucket bounds, in seconds.
# fmt: off
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                    30.0, 40.0, 50.0, 60.0, 120.0)
# fmt: on


class _EngineCollector(Collector):
    def __init__(self, engine: Engine, model: str) -> None:
        self._engine = engine
        self._labels = [ENGINE_INDEX, model]

    def collect(self) -> Iterable[Metric]:
        e, lv = self._engine, self._labels
        names = ["engine", "model_name"]
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                e.running,
            ),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(lv, float(value))
            yield g
        for name, doc, total in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", e.totals.prompt_tokens),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                e.totals.generation_tokens,
            ),
            (
                "vllm:num_preemptions",
                "Cumulative number of preemption from the engine.",
                e.totals.preemptions,
            ),
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                e.totals.prefix_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                e.totals.prefix_hits,
            ),
            (
                "vllm:prompt_tokens_cached",
                "Number of cached prompt tokens (local + external).",
                e.totals.prompt_tokens_cached,
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(lv, float(total))
            yield c
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            labels=[*names, "source"],
        )
        cached = e.totals.prompt_tokens_cached
        for source, n in (
            ("local_compute", e.totals.prompt_tokens - cached),
            ("local_cache_hit", cached),
            ("external_kv_transfer", 0),
        ):
            by_source.add_metric([*lv, source], float(n))
        yield by_source
        ok = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*names, "finished_reason"],
        )
        ok.add_metric([*lv, Finish.LENGTH.value], float(e.totals.finished[Finish.LENGTH]))
        yield ok
        yield _inter_token(e, lv, names)


def _inter_token(e: Engine, lv: list[str], names: list[str]) -> Metric:
    """``vllm:inter_token_latency_seconds``: one observation per token after a sequence's
    first (the agent's decode-speed estimate divides its count by its sum)."""
    itl = HistogramMetricFamily(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        labels=names,
    )
    cumulative, buckets = 0, []
    for bound, n in zip((*ITL_BUCKETS, math.inf), e.totals.inter_token, strict=True):
        cumulative += n
        buckets.append(("+Inf" if math.isinf(bound) else repr(bound), float(cumulative)))
    itl.add_metric(lv, buckets, e.totals.inter_token_s)
    return itl


class ServerMetrics:
    """The registry of one fake server, plus the hooks that feed it."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self._model = model
        labels = ("engine", "model_name")
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            registry=self.registry,
            buckets=_TTFT_BUCKETS,
        ).labels(ENGINE_INDEX, model)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        ).labels(ENGINE_INDEX, model)
        self._queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels,
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        ).labels(ENGINE_INDEX, model)
        self.rejected = Counter(
            "aixds_fake_rejected",
            "Requests the fake server refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        """Not a vLLM metric: ``overloaded``, ``injected_error``, ``loading``."""

    def watch(self, engine: Engine) -> None:
        """Report this engine's gauges and counters (once, after building both)."""
        self.registry.register(_EngineCollector(engine, self._model))

    def on_finish(self, seq: Seq) -> None:
        if seq.finish is not Finish.LENGTH or seq.finished_at is None:
            return
        self._e2e.observe(seq.finished_at - seq.arrived)
        if seq.started is not None:
            self._queue.observe(seq.started - seq.arrived)
        if seq.first_token_at is not None:
            self._ttft.observe(seq.first_token_at - seq.arrived)

    def render(self) -> bytes:
        return generate_latest(self.registry)
