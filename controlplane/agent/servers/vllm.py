"""The vLLM adapter: models from ``/v1/models``, load from ``/metrics``, state from ``/health``.

The parsers are pure and distrust their input: a metric that is missing, NaN, negative or
absurd is reported as a problem and counts as 0, so the record never carries nonsense
(the codec would reject it, and the replica would vanish from the fleet).

State: ``/health`` 200 -> models ``ready``; 503 -> ``loading`` (the names come from
``/v1/models``, or from the last time they were seen if it lists none while loading);
no answer -> unreachable, published with no models so that the control plane drops it at
once instead of waiting for the record's TTL. (The flow is ``openai_base``'s.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.agent.servers.openai_base import OpenAIServerAdapter
from controlplane.agent.servers.scrape import (
    DEFAULT_VERSION,
    MAX_COUNT,
    LoadMetrics,
    MetricsError,
    Reading,
    Reply,
    parse_openai_models,
)
from controlplane.fleet.model import ServerKind

__all__ = [
    "DEFAULT_VERSION",
    "MAX_COUNT",
    "MetricsError",
    "MetricsReading",
    "VllmAdapter",
    "parse_metrics",
    "parse_models",
]

WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
GENERATED = ("vllm:generation_tokens_total",)
"""Decode tokens so far (a counter): the agent's speed estimate (``servers.speed``)."""
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
"""The current name first; vLLM < 0.10 named it ``gpu_cache_usage_perc`` (also 0..1)."""
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
"""Prefix-cache counters (prompt tokens found / looked up): the agent's hit rate
(``servers.cache_hits``). V1 engines before 0.9 used the ``gpu_`` names."""
PREFIX_HIT_RATE = ("vllm:gpu_prefix_cache_hit_rate",)
"""The V0 engine's gauge instead (0..1 since start, -1 before the first lookup)."""

TOKEN_LATENCY = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
"""Time between two tokens of a sequence (a histogram; vLLM < 0.11 named it
``time_per_output_token_seconds``): the agent's speed estimate, exact for short requests
too. Without it, ``GENERATED`` over the running gauge."""

MetricsReading = Reading


METRICS = LoadMetrics(
    WAITING,
    RUNNING,
    KV_CACHE,
    GENERATED,
    PREFIX_HITS,
    PREFIX_QUERIES,
    PREFIX_HIT_RATE,
    TOKEN_LATENCY,
)


def parse_metrics(text: str) -> Reading:
    """Read vLLM's load from Prometheus text; ``MetricsError`` if it is not that.

    Counts are summed over every series (one per ``model_name`` and, with data-parallel
    engines, per ``engine``). KV-cache use is a fraction, so it is averaged over series.
    One bad series makes the whole metric ``None``: a partial sum would understate load.
    """
    return METRICS.read(text)


def parse_models(doc: Any, versions: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of each model in ``/v1/models`` (LoRA adapters included)."""
    return parse_openai_models(doc, versions)


class VllmAdapter(OpenAIServerAdapter):
    """Probes one vLLM (or the fake) server. Implements ``ModelServerAdapter``."""

    @property
    def kind(self) -> ServerKind:
        return ServerKind.VLLM

    def read_load(self, reply: Reply) -> Reading:
        return parse_metrics(reply.text)
