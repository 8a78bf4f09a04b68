"""The probe shared by servers with an OpenAI API: vLLM, SGLang and TensorRT-LLM's serve.

State comes from ``/health`` (200 -> ``ready``; a loading code, 503 by default ->
``loading``, with the names from ``/v1/models`` or, if it lists none while loading, from
the last time they were seen), names from ``/v1/models``, load from the server's metrics
endpoint, which each subclass reads in ``read_load``; the same scrape's generated-token
counter (or decode-step counts, ``trtllm``) feeds the replica's measured decode speed
(``servers.speed``), and its prefix-cache counters the recent hit rate
(``servers.cache_hits``). No answer at all -> unreachable, published with no models so
that the control plane drops the replica at once.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane.agent.servers.adapter import UNREACHABLE, HttpAdapter, Probe
from controlplane.agent.servers.scrape import (
    Reading,
    Reply,
    failure,
    fetch,
    json_of,
    parse_openai_models,
    reading_from,
)
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind

Names = tuple[tuple[str, str], ...]


class OpenAIServerAdapter(HttpAdapter):
    """Base of the OpenAI-style adapters; subclasses set ``kind`` and ``read_load``."""

    health_path = "/health"
    models_path = "/v1/models"
    metrics_path = "/metrics"
    loading_codes: frozenset[int] = frozenset({503})
    """``/health`` codes that mean "starting, weights loading"."""
    _known: Names = ()
    """The model names last seen (a server reloading may list none)."""

    @property
    def kind(self) -> ServerKind:
        raise NotImplementedError

    def read_load(self, reply: Reply) -> Reading:
        """The load in a 200 answer of the metrics endpoint; raises ``ValueError`` if unreadable."""
        raise NotImplementedError

    async def fallback_names(self) -> Names:
        """Names when ``/v1/models`` gives none (SGLang asks ``/get_model_info``)."""
        return ()

    async def probe(self) -> Probe:
        health, models, metrics = await asyncio.gather(
            self._get(self.health_path), self._get(self.models_path), self._get(self.metrics_path)
        )
        if isinstance(health, Exception):
            self._notes.say("state", f"unreachable: {failure(health)}", logging.WARNING)
            return UNREACHABLE
        if health.status in self.loading_codes:
            state = ModelState.LOADING
        elif health.status == 200:
            state = ModelState.READY
        else:
            msg = f"{self.health_path} answered {health.status}: publishing no models"
            self._notes.say("state", msg, logging.WARNING)
            return Probe(reachable=True)
        names = self._names(models) or await self.fallback_names()
        if state is ModelState.LOADING and not names:
            names = self._known  # a (re)loading server may list nothing yet
        elif names:
            self._known = names
        load, problem = (LoadStats(), "")
        if state is ModelState.READY:
            reading, problem = reading_from(metrics, self.metrics_path, self.read_load)
            if reading is not None:
                load = self._measure(reading)
        self._notes.say("state", f"{state.value}: {', '.join(f'{n}@{v}' for n, v in names) or '-'}")
        self._notes.say("metrics", problem, logging.WARNING)
        return Probe(
            reachable=True,
            models=tuple(ModelInfo(n, v, state) for n, v in names),
            load=load,
            speed=self._speed.speed,
            capacity=self._speed.capacity,
        )

    async def _get(self, path: str) -> Reply | Exception:
        return await fetch(self._client, "GET", self._base + path)

    def _names(self, reply: Reply | Exception) -> Names:
        try:
            return parse_openai_models(json_of(reply), self._versions)
        except ValueError:
            return ()
