"""The Triton adapter: models from ``POST /v2/repository/index``, load from the metrics port.

Models: every index entry with state READY, LOADING or UNLOADING, with Triton's own
version number as the published version (unless a version is configured for the name);
UNAVAILABLE entries are not on the server. Triton serves ``/metrics`` on its own port
(8002 by default), so the metrics URL is separate.

Load: ``nv_inference_pending_request_count`` (requests queued in Triton, all models) plus
the TensorRT-LLM backend's ``nv_trt_llm_request_metrics{request_type="waiting"}`` is
waiting; the backend's ``active`` (or ``scheduled``) requests are running, and
``nv_trt_llm_kv_cache_block_metrics`` used/max blocks (or ``fraction``) is KV-cache use.
Other backends expose no running or KV gauge (``nv_inference_exec_count`` is a counter of
batches, not a load): those count as 0, noted once in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from controlplane.agent.servers.adapter import UNREACHABLE, HttpAdapter, Probe
from controlplane.agent.servers.scrape import (
    DEFAULT_VERSION,
    MAX_COUNT,
    Reading,
    Reply,
    Series,
    failure,
    fetch,
    gauge,
    json_of,
    load_from,
    read_samples,
    valid_name,
)
from controlplane.fleet.codec import MAX_MODELS
from controlplane.fleet.model import ModelInfo, ModelState, ServerKind

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8002
PENDING = "nv_inference_pending_request_count"
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV = "nv_trt_llm_kv_cache_block_metrics"
STATES = {
    "READY": ModelState.READY,
    "LOADING": ModelState.LOADING,
    "UNLOADING": ModelState.UNLOADING,
}
_RANK = {ModelState.READY: 0, ModelState.UNLOADING: 1, ModelState.LOADING: 2}
MAX_BLOCKS = 1e9


def default_metrics_url(base_url: str) -> str:
    """Triton's metrics endpoint next to its HTTP API: same host, port 8002."""
    url = httpx.URL(base_url)
    return str(url.copy_with(port=DEFAULT_METRICS_PORT, path="/metrics"))


def parse_index(doc: Any, versions: Mapping[str, str]) -> tuple[ModelInfo, ...]:
    """Models present in a repository index answer; ``ValueError`` if it is not one."""
    if not isinstance(doc, list):
        raise ValueError("repository index is not a list")
    found: dict[tuple[str, str], ModelState] = {}
    for entry in doc:
        if not isinstance(entry, dict):
            continue
        name = valid_name(entry.get("name"))
        state = STATES.get(str(entry.get("state", "")).upper())
        if name is None or state is None:
            continue
        own = entry.get("version")
        own = own if isinstance(own, str) and own and len(own) <= 128 else DEFAULT_VERSION
        key = (name, versions.get(name, own))
        if key not in found or _RANK[state] < _RANK[found[key]]:
            found[key] = state
        if len(found) >= MAX_MODELS:
            break
    return tuple(ModelInfo(n, v, s) for (n, v), s in found.items())


def parse_metrics(text: str) -> Reading:
    """Triton's load, summed over models; ``MetricsError`` if it is not Prometheus text."""
    samples = read_samples(text, (PENDING, TRT_REQUESTS, TRT_KV))
    problems: list[str] = []
    pending = gauge(samples, (PENDING,), MAX_COUNT, sum, problems)
    waiting = pending
    running: float | None = 0.0
    kv: float | None = 0.0
    if TRT_REQUESTS in samples:
        trt_waiting = _request_type(samples, "waiting", problems)
        waiting = None if pending is None or trt_waiting is None else pending + trt_waiting
        running = _running(samples, problems)
    if TRT_KV in samples:
        kv = _kv(samples[TRT_KV], problems)
    return Reading(waiting, running, kv, tuple(problems))


def _request_type(samples: Mapping[str, Series], kind: str, problems: list[str]) -> float | None:
    return gauge(samples, (TRT_REQUESTS,), MAX_COUNT, sum, problems, where={"request_type": kind})


def _running(samples: Mapping[str, Series], problems: list[str]) -> float | None:
    """The batch manager's ``active`` requests, or ``scheduled`` ones (whichever is larger)."""
    mine: list[str] = []
    active = _request_type(samples, "active", mine)
    scheduled = _request_type(samples, "scheduled", mine)
    bad = [p for p in mine if not p.endswith(" missing")]
    problems.extend(bad)
    if active is None and scheduled is None:
        if not bad:
            problems.append(f'{TRT_REQUESTS}{{request_type="active"|"scheduled"}} missing')
        return None
    return max(active or 0.0, scheduled or 0.0)


def _kv(series: Series, problems: list[str]) -> float | None:
    """Used/max blocks summed over models, else the mean ``fraction``."""
    by_type: dict[str, list[float]] = {}
    for labels, v in series:
        by_type.setdefault(labels.get("kv_cache_block_type", ""), []).append(v)
    used, total = by_type.get("used"), by_type.get("max")
    if used and total and len(used) == len(total):
        u, t = sum(used), sum(total)
        if all(0 <= x <= MAX_BLOCKS for x in used + total) and t > 0 and u <= t:
            return u / t
    fraction = by_type.get("fraction")
    if fraction and all(0 <= f <= 1 for f in fraction):
        return sum(fraction) / len(fraction)
    problems.append(f"{TRT_KV} has no believable used/max blocks or fraction")
    return None


class TritonAdapter(HttpAdapter):
    """Probes one Triton server. Implements ``ModelServerAdapter``."""

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        versions: Mapping[str, str],
        metrics_url: str = "",
    ) -> None:
        super().__init__(base_url, client, versions)
        self._metrics_url = metrics_url or default_metrics_url(self._base)

    @property
    def kind(self) -> ServerKind:
        return ServerKind.TRITON

    async def probe(self) -> Probe:
        index, metrics = await asyncio.gather(
            fetch(self._client, "POST", self._base + "/v2/repository/index", body={}),
            fetch(self._client, "GET", self._metrics_url),
        )
        if isinstance(index, Exception):
            self._notes.say("state", f"unreachable: {failure(index)}", logging.WARNING)
            return UNREACHABLE
        try:
            models = parse_index(json_of(index), self._versions)
        except ValueError as e:
            msg = f"/v2/repository/index: {e} ({failure(index)}): publishing no models"
            self._notes.say("state", msg, logging.WARNING)
            return Probe(reachable=True)
        load, problem = load_from(metrics, self._metrics_url, _read)
        shown = ", ".join(f"{m.name}@{m.version} {m.state.value}" for m in models) or "-"
        self._notes.say("state", f"models: {shown}")
        self._notes.say("metrics", problem, logging.WARNING)
        return Probe(True, models, load)


def _read(reply: Reply) -> Reading:
    return parse_metrics(reply.text)
