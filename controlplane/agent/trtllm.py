"""The TensorRT-LLM adapter (``trtllm-serve``): OpenAI ``/v1/models``, JSON ``/metrics``.

``trtllm-serve``'s ``/metrics`` answers a JSON list of per-iteration statistics gathered
since the previous call (it drains them). The newest entry gives ``numQueuedRequests``
(waiting), ``numActiveRequests`` (running) and ``kvCacheStats.usedNumBlocks /
maxNumBlocks`` (KV-cache use). An empty list means no iteration ran since the last probe:
the server is idle (or was started without iteration stats), so the load is 0.
State: ``/health`` 200 -> ready, 503 -> loading (the server listens only once loaded).
"""

from __future__ import annotations

from typing import Any

from controlplane.agent.openai_base import OpenAIServerAdapter
from controlplane.agent.scrape import MAX_COUNT, Reading, Reply, checked_number
from controlplane.fleet.model import ServerKind

MAX_BLOCKS = 1e9


def parse_stats(doc: Any) -> Reading:
    """Load from the ``/metrics`` JSON; ``ValueError`` if it is not a list of stats."""
    if not isinstance(doc, list):
        raise ValueError("not a list of iteration stats")
    if not doc:
        return Reading(0.0, 0.0, 0.0)
    last = doc[-1]
    if not isinstance(last, dict):
        raise ValueError("the newest iteration stats entry is not an object")
    problems: list[str] = []
    waiting = _count(last, "numQueuedRequests", problems)
    running = _count(last, "numActiveRequests", problems)
    return Reading(waiting, running, _kv(last.get("kvCacheStats"), problems), tuple(problems))


def _count(stats: dict[str, Any], key: str, problems: list[str]) -> float | None:
    if key not in stats:
        problems.append(f"{key} missing")
        return None
    v = checked_number(stats[key], MAX_COUNT)
    if v is None:
        problems.append(f"{key} is {stats[key]!r}, outside [0, {MAX_COUNT:g}]")
    return v


def _kv(kv: Any, problems: list[str]) -> float | None:
    if not isinstance(kv, dict):
        problems.append("kvCacheStats missing")
        return None
    used = checked_number(kv.get("usedNumBlocks"), MAX_BLOCKS)
    total = checked_number(kv.get("maxNumBlocks"), MAX_BLOCKS)
    if used is None or total is None or total == 0 or used > total:
        problems.append(
            f"kvCacheStats has usedNumBlocks={kv.get('usedNumBlocks')!r} "
            f"maxNumBlocks={kv.get('maxNumBlocks')!r}"
        )
        return None
    return used / total


class TrtllmAdapter(OpenAIServerAdapter):
    """Probes one ``trtllm-serve`` server. Implements ``ModelServerAdapter``."""

    @property
    def kind(self) -> ServerKind:
        return ServerKind.TRTLLM

    def read_load(self, reply: Reply) -> Reading:
        return parse_stats(reply.json())
