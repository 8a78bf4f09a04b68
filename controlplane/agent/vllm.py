"""The vLLM adapter: models from ``/v1/models``, load from ``/metrics``, state from ``/health``.

The parsers are pure and distrust their input: a metric that is missing, NaN, negative or
absurd is reported as a problem and counts as 0, so the record never carries nonsense
(the codec would reject it, and the replica would vanish from the fleet).

State: ``/health`` 200 -> models ``ready``; 503 -> ``loading`` (the names come from
``/v1/models``, or from the last time they were seen if it lists none while loading);
no answer -> unreachable, published with no models so that the control plane drops it at
once instead of waiting for the record's TTL.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controlplane.agent.adapter import UNREACHABLE, Probe
from controlplane.fleet.codec import MAX_MODELS
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind

log = logging.getLogger(__name__)

DEFAULT_VERSION = "default"
MAX_COUNT = 1e6
"""More waiting or running requests than this on one server is a broken exporter."""

WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
"""The current name first; vLLM < 0.10 named it ``gpu_cache_usage_perc`` (also 0..1)."""
_WANTED = frozenset(WAITING + RUNNING + KV_CACHE)


class MetricsError(ValueError):
    """``/metrics`` is not Prometheus text."""


@dataclass(frozen=True, slots=True)
class MetricsReading:
    """The load metrics found in one scrape; ``None`` = missing or not believable."""

    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    problems: tuple[str, ...] = ()

    def load(self) -> LoadStats:
        return LoadStats(
            queue_waiting=self.waiting or 0.0,
            running=self.running or 0.0,
            kv_cache_usage=self.kv_cache_usage or 0.0,
        )


def parse_metrics(text: str) -> MetricsReading:
    """Read vLLM's load gauges from Prometheus text; ``MetricsError`` if it is not that.

    Counts are summed over every series (one per ``model_name`` and, with data-parallel
    engines, per ``engine``). KV-cache use is a fraction, so it is averaged over series.
    One bad series makes the whole metric ``None``: a partial sum would understate load.
    """
    samples: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in _WANTED:
                    samples.setdefault(s.name, []).append(float(s.value))
    except Exception as e:  # the parser raises several types on garbage
        raise MetricsError(f"not Prometheus text: {e}") from None
    problems: list[str] = []
    waiting = _metric(samples, WAITING, MAX_COUNT, sum, problems)
    running = _metric(samples, RUNNING, MAX_COUNT, sum, problems)
    kv = _metric(samples, KV_CACHE, 1.0, _mean, problems)
    return MetricsReading(waiting, running, kv, tuple(problems))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _metric(
    samples: dict[str, list[float]],
    names: tuple[str, ...],
    hi: float,
    combine: Callable[[list[float]], float],
    problems: list[str],
) -> float | None:
    name = next((n for n in names if n in samples), None)
    if name is None:
        problems.append(f"{names[0]} missing")
        return None
    values = samples[name]
    bad = [v for v in values if not math.isfinite(v) or v < 0 or v > hi]
    if bad:
        problems.append(f"{name} has {bad[0]!r}, outside [0, {hi:g}]")
        return None
    return float(combine(values))


def parse_models(doc: Any, versions: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of each model in an OpenAI ``/v1/models`` answer.

    The version is ``versions[name]`` (the agent's ``--model-version``), else the entry's
    ``aixds_version`` (the fake server sets it), else ``"default"``. ``ValueError`` if the
    document is not a model list.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError("not an OpenAI model list (no 'data' list)")
    out: dict[str, str] = {}
    for entry in doc["data"]:
        if not isinstance(entry, dict):
            continue
        name = entry.get("id")
        if not isinstance(name, str) or not name or len(name) > 1024:
            continue
        tag = entry.get("aixds_version")
        if not isinstance(tag, str) or not tag or len(tag) > 128:
            tag = DEFAULT_VERSION
        out.setdefault(name, versions.get(name, tag))
        if len(out) >= MAX_MODELS:
            break
    return tuple(out.items())


class VllmAdapter:
    """Probes one vLLM (or the fake) server. Implements ``ModelServerAdapter``."""

    def __init__(
        self, base_url: str, client: httpx.AsyncClient, versions: Mapping[str, str]
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client = client
        self._versions = dict(versions)
        self._known: tuple[tuple[str, str], ...] = ()
        self._said: dict[str, str] = {}

    @property
    def kind(self) -> ServerKind:
        return ServerKind.VLLM

    async def probe(self) -> Probe:
        health, models, metrics = await asyncio.gather(
            self._get("/health"), self._get("/v1/models"), self._get("/metrics")
        )
        if isinstance(health, Exception):
            self._say("state", f"unreachable: {type(health).__name__}: {health}", logging.WARNING)
            return UNREACHABLE
        if health.status_code == 503:
            state = ModelState.LOADING
        elif health.status_code == 200:
            state = ModelState.READY
        else:
            msg = f"/health answered {health.status_code}: publishing no models"
            self._say("state", msg, logging.WARNING)
            return Probe(reachable=True)
        names = self._models(models)
        if state is ModelState.LOADING and not names:
            names = self._known  # a (re)loading server may list nothing yet
        elif names:
            self._known = names
        load, problem = self._load(metrics) if state is ModelState.READY else (LoadStats(), "")
        self._say("state", f"{state.value}: {', '.join(f'{n}@{v}' for n, v in names) or '-'}")
        self._say("metrics", problem, logging.WARNING)
        return Probe(
            reachable=True,
            models=tuple(ModelInfo(n, v, state) for n, v in names),
            load=load,
        )

    async def _get(self, path: str) -> httpx.Response | Exception:
        try:
            return await self._client.get(self._base + path)
        except httpx.HTTPError as e:
            return e

    def _models(self, resp: httpx.Response | Exception) -> tuple[tuple[str, str], ...]:
        if isinstance(resp, Exception) or resp.status_code != 200:
            return ()
        try:
            return parse_models(resp.json(), self._versions)
        except ValueError:
            return ()

    def _load(self, resp: httpx.Response | Exception) -> tuple[LoadStats, str]:
        if isinstance(resp, Exception) or resp.status_code != 200:
            what = resp if isinstance(resp, Exception) else resp.status_code
            return LoadStats(), f"/metrics failed ({what}): load published as 0"
        try:
            reading = parse_metrics(resp.text)
        except MetricsError as e:
            return LoadStats(), f"/metrics: {e}; load published as 0"
        problem = (
            f"/metrics: {'; '.join(reading.problems)} (counted as 0)" if reading.problems else ""
        )
        return reading.load(), problem

    def _say(self, topic: str, what: str, level: int = logging.INFO) -> None:
        """Log a change of condition once, not on every probe."""
        if what != self._said.get(topic, ""):
            self._said[topic] = what
            if what:
                log.log(level, "%s %s", self._base, what)
