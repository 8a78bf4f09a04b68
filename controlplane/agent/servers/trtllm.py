"""The TensorRT-LLM adapter (``trtllm-serve``): OpenAI ``/v1/models``, JSON ``/metrics``.

``trtllm-serve``'s ``/metrics`` answers a JSON list of per-iteration statistics gathered
since the previous call (it drains them). The newest entry gives ``numQueuedRequests``
(waiting), ``numActiveRequests`` (running) and ``kvCacheStats.usedNumBlocks /
maxNumBlocks`` (KV-cache use). An empty list means no iteration ran since the last probe:
the server is idle (or was started without iteration stats), so the load is 0.
Decode speed (``servers.speed``): the pure decode iterations (``numGenRequests`` > 0, no
context requests) and their ``iterLatencyMS``, summed over the probes: each gives every
running sequence one token.
State: ``/health`` 200 -> ready, 503 -> loading (the server listens only once loaded).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controlplane.agent.servers.openai_base import OpenAIServerAdapter
from controlplane.agent.servers.scrape import MAX_COUNT, Reading, Reply, checked_number
from controlplane.fleet.model import ServerKind

MAX_BLOCKS = 1e9


def parse_stats(doc: Any) -> Reading:
    """Load from the ``/metrics`` JSON; ``ValueError`` if it is not a list of stats."""
    if not isinstance(doc, list):
        raise ValueError("not a list of iteration stats")
    if not doc:
        return Reading(0.0, 0.0, 0.0, decode_steps=(0.0, 0.0))
    last = doc[-1]
    if not isinstance(last, dict):
        raise ValueError("the newest iteration stats entry is not an object")
    problems: list[str] = []
    waiting = _count(last, "numQueuedRequests", problems)
    running = _count(last, "numActiveRequests", problems)
    kv = _kv(last.get("kvCacheStats"), problems)
    return Reading(waiting, running, kv, tuple(problems), decode_steps=decode_iterations(doc))


def decode_iterations(stats: list[Any]) -> tuple[float, float]:
    """Pure decode iterations in these stats and their total latency, seconds."""
    n, seconds = 0.0, 0.0
    for it in stats:
        ifb = it.get("inflightBatchingStats") if isinstance(it, dict) else None
        if not isinstance(ifb, dict):
            continue
        gen, ctx = ifb.get("numGenRequests"), ifb.get("numContextRequests")
        ms = checked_number(it.get("iterLatencyMS"), 1e6)
        if ms and ctx == 0 and isinstance(gen, int) and gen > 0:
            n, seconds = n + 1, seconds + ms / 1000.0
    return n, seconds


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

    _steps: tuple[float, float] = (0.0, 0.0)
    """Decode iterations and their seconds, summed over every probe (``/metrics`` drains)."""

    def read_load(self, reply: Reply) -> Reading:
        reading = parse_stats(reply.json())
        if reading.decode_steps is not None:
            n, secs = reading.decode_steps
            self._steps = (self._steps[0] + n, self._steps[1] + secs)
            reading = replace(reading, decode_steps=self._steps)
        return reading
