"""The Ollama adapter: loaded models from ``/api/ps``.

Every model ``/api/ps`` lists is in memory and ready (its ``name``, e.g. ``llama3:8b``, is
what clients put in ``model``). Models that are only pulled (``/api/tags``) are not
published: a request for one would wait for a cold load. Ollama exposes no queue, batch or
KV-cache numbers, so the load is published as 0 (unknown): weights for Ollama replicas
rest on GPU telemetry alone. No answer -> unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controlplane.agent.servers.adapter import UNREACHABLE, HttpAdapter, Probe
from controlplane.agent.servers.scrape import DEFAULT_VERSION, failure, fetch, json_of, valid_name
from controlplane.fleet.codec import MAX_MODELS
from controlplane.fleet.model import ModelInfo, ModelState, ServerKind


def parse_ps(doc: Any, versions: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of each loaded model; ``ValueError`` if it is not a ps answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ValueError("not an /api/ps answer (no 'models' list)")
    out: dict[str, str] = {}
    for entry in doc["models"]:
        if not isinstance(entry, dict):
            continue
        name = valid_name(entry.get("name")) or valid_name(entry.get("model"))
        if name is not None:
            out.setdefault(name, versions.get(name, DEFAULT_VERSION))
        if len(out) >= MAX_MODELS:
            break
    return tuple(out.items())


class OllamaAdapter(HttpAdapter):
    """Probes one Ollama server. Implements ``ModelServerAdapter``."""

    @property
    def kind(self) -> ServerKind:
        return ServerKind.OLLAMA

    async def probe(self) -> Probe:
        ps = await fetch(self._client, "GET", self._base + "/api/ps")
        if isinstance(ps, Exception):
            self._notes.say("state", f"unreachable: {failure(ps)}", logging.WARNING)
            return UNREACHABLE
        try:
            names = parse_ps(json_of(ps), self._versions)
        except ValueError as e:
            self._notes.say("state", f"/api/ps: {e} ({failure(ps)}): no models", logging.WARNING)
            return Probe(reachable=True)
        self._notes.say("state", f"loaded: {', '.join(f'{n}@{v}' for n, v in names) or '-'}")
        return Probe(True, tuple(ModelInfo(n, v, ModelState.READY) for n, v in names))
