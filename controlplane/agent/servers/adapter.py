"""What the agent needs from a model server, whatever its kind: the ``ModelServerAdapter``.

An adapter looks at one model-server endpoint and says which models it has (with their
state) and how loaded it is. It never raises for a server that is down or answers
nonsense: that is a ``Probe`` too (unreachable, or no models).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import httpx

from controlplane.agent.servers.cache_hits import PrefixHitRate
from controlplane.agent.servers.scrape import Notes, Reading
from controlplane.agent.servers.speed import REFERENCE_TPS, DecodeSpeed
from controlplane.fleet.model import (
    AvailableModel,
    LoadStats,
    ModelFailure,
    ModelInfo,
    ServerKind,
)


@dataclass(frozen=True, slots=True)
class Probe:
    """One look at a model server."""

    reachable: bool
    """False when the server did not answer at all (connection refused, timeout)."""
    models: tuple[ModelInfo, ...] = ()
    """Models present, each with its state; empty when down or not trustworthy."""
    load: LoadStats = field(default_factory=LoadStats)
    speed: float | None = None
    """Measured decode speed relative to the reference (``servers.speed``); ``None``: unknown."""
    capacity: float | None = None
    """Best recent decode speed on a coarse ladder (``servers.speed``); ``None``: unknown."""
    failures: tuple[ModelFailure, ...] = ()
    """Failed loads/unloads (the executor's overlay adds them; adapters leave it empty)."""
    available: tuple[AvailableModel, ...] = ()
    """Models the server can load on demand (``ondemand``; measured load times: executor)."""
    sleeping: bool | None = None
    """The server sleeps (its models are then ``sleeping``); ``None``: it cannot say."""
    lost: tuple[tuple[str, str], ...] = ()
    """Unreachable now, it served these ``(name, version)`` (the publisher's ``LostModels``
    adds them; adapters leave it empty)."""


UNREACHABLE = Probe(reachable=False)


class ModelServerAdapter(Protocol):
    """Reads one model server's state; ``adapters.make_adapter`` picks one per kind.

    Implementations: ``vllm.VllmAdapter``, ``sglang.SglangAdapter``, ``tgi.TgiAdapter``,
    ``triton.TritonAdapter``, ``trtllm.TrtllmAdapter``, ``ollama.OllamaAdapter``.
    """

    @property
    def kind(self) -> ServerKind: ...

    async def probe(self) -> Probe:
        """Look at the server now; never raises for server-side trouble."""
        ...


class HttpAdapter:
    """What every adapter keeps: the server's base URL, the shared HTTP client, the
    version overrides, a ``Notes`` for logging changes once, and the server's measured
    decode speed and prefix-cache hit rate. Subclasses add ``kind`` and ``probe``."""

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        versions: Mapping[str, str],
        *,
        reference_tps: float = REFERENCE_TPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._client = client
        self._versions = dict(versions)
        self._notes = Notes(self._base, logging.getLogger(type(self).__module__))
        self._speed = DecodeSpeed(reference_tps)
        self._hits = PrefixHitRate()
        self._clock = clock

    def _measure(self, reading: Reading) -> LoadStats:
        """Feed the decode-speed and hit-rate estimates from one scrape's counters, if it
        has any; the load to publish, with the recent prefix-cache hit rate."""
        now = self._clock()
        self._speed.observe(
            now,
            generated=reading.generated_tokens,
            running=reading.running,
            intervals=reading.decode_steps,
        )
        if reading.prefix_cache is not None:
            self._hits.update(now, *reading.prefix_cache)
        elif reading.prefix_hit_rate is not None:
            self._hits.observe(reading.prefix_hit_rate)
        return replace(reading.load(), prefix_cache_hit_rate=self._hits.rate)
