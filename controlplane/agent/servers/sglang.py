"""The SGLang adapter: names from ``/v1/models`` (else ``/get_model_info``), load from ``/metrics``.

Reads ``sglang:num_queue_reqs`` (waiting), ``sglang:num_running_reqs`` (running) and
``sglang:token_usage`` (KV-cache pool use, 0..1), and for the prefix-cache hit rate
``sglang:cached_tokens_total`` over ``sglang:prompt_tokens_total`` (else the
``sglang:cache_hit_rate`` gauge). Metrics exist only when the server runs
with ``--enable-metrics``; without them the load is published as 0 and the agent says so.
Series repeated per GPU rank (``tp_rank``/``pp_rank`` labels) count once; data-parallel
schedulers (``dp_rank``) are summed, and their token usage averaged. State as for vLLM:
``/health`` 200 -> ready, 503 -> loading.
"""

from __future__ import annotations

from controlplane.agent.servers.openai_base import Names, OpenAIServerAdapter
from controlplane.agent.servers.scrape import (
    DEFAULT_VERSION,
    LoadMetrics,
    Reading,
    Reply,
    json_of,
    valid_name,
)
from controlplane.fleet.model import ServerKind

WAITING = ("sglang:num_queue_reqs",)
RUNNING = ("sglang:num_running_reqs",)
GENERATED = ("sglang:generation_tokens_total",)
"""Decode tokens so far (a counter): the agent's speed estimate (``servers.speed``)."""
KV_CACHE = ("sglang:token_usage",)
PREFIX_HITS = ("sglang:cached_tokens_total",)
PREFIX_QUERIES = ("sglang:prompt_tokens_total",)
"""Cached prompt tokens (every ``cache_source`` summed) and all prompt tokens: the agent's
prefix-cache hit rate (``servers.cache_hits``)."""
PREFIX_HIT_RATE = ("sglang:cache_hit_rate",)
"""The scheduler's own gauge (its last prefill batch), when the counters are missing."""
TOKEN_LATENCY = ("sglang:inter_token_latency_seconds",)
"""Time between two tokens of a request (a histogram): the speed estimate, preferred to
``GENERATED`` over the running gauge."""


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
    """SGLang's load from Prometheus text; ``MetricsError`` if it is not that."""
    return METRICS.read(text)


def model_from_info(doc: object) -> str | None:
    """The served model in a ``/get_model_info`` answer (``model_path``)."""
    if not isinstance(doc, dict):
        return None
    return valid_name(doc.get("model_path"))


class SglangAdapter(OpenAIServerAdapter):
    """Probes one SGLang server. Implements ``ModelServerAdapter``."""

    @property
    def kind(self) -> ServerKind:
        return ServerKind.SGLANG

    def read_load(self, reply: Reply) -> Reading:
        return parse_metrics(reply.text)

    async def fallback_names(self) -> Names:
        name = model_from_info(json_of(await self._get("/get_model_info")))
        if name is None:
            return ()
        return ((name, self._versions.get(name, DEFAULT_VERSION)),)
