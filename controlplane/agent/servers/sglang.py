"""The SGLang adapter: names from ``/v1/models`` (else ``/get_model_info``), load from ``/metrics``.

Reads ``sglang:num_queue_reqs`` (waiting), ``sglang:num_running_reqs`` (running) and
``sglang:token_usage`` (KV-cache pool use, 0..1). Metrics exist only when the server runs
with ``--enable-metrics``; without them the load is published as 0 and the agent says so.
Series repeated per GPU rank (``tp_rank``/``pp_rank`` labels) count once; data-parallel
schedulers (``dp_rank``) are summed, and their token usage averaged. State as for vLLM:
``/health`` 200 -> ready, 503 -> loading.
"""

from __future__ import annotations

from controlplane.agent.servers.openai_base import Names, OpenAIServerAdapter
from controlplane.agent.servers.scrape import (
    DEFAULT_VERSION,
    MAX_COUNT,
    Reading,
    Reply,
    counter_total,
    gauge,
    json_of,
    mean,
    read_samples,
    valid_name,
)
from controlplane.fleet.model import ServerKind

WAITING = ("sglang:num_queue_reqs",)
RUNNING = ("sglang:num_running_reqs",)
GENERATED = ("sglang:generation_tokens_total",)
"""Decode tokens so far (a counter): the agent's speed estimate (``servers.speed``)."""
KV_CACHE = ("sglang:token_usage",)


def parse_metrics(text: str) -> Reading:
    """SGLang's load gauges from Prometheus text; ``MetricsError`` if it is not that."""
    samples = read_samples(text, WAITING + RUNNING + KV_CACHE + GENERATED)
    problems: list[str] = []
    waiting = gauge(samples, WAITING, MAX_COUNT, sum, problems)
    running = gauge(samples, RUNNING, MAX_COUNT, sum, problems)
    kv = gauge(samples, KV_CACHE, 1.0, mean, problems)
    return Reading(waiting, running, kv, tuple(problems), counter_total(samples, GENERATED))


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
