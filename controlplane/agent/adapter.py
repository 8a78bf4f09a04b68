"""What the agent needs from a model server, whatever its kind: the ``ModelServerAdapter``.

An adapter looks at one model-server endpoint and says which models it has (with their
state) and how loaded it is. It never raises for a server that is down or answers
nonsense: that is a ``Probe`` too (unreachable, or no models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from controlplane.fleet.model import LoadStats, ModelFailure, ModelInfo, ServerKind


@dataclass(frozen=True, slots=True)
class Probe:
    """One look at a model server."""

    reachable: bool
    """False when the server did not answer at all (connection refused, timeout)."""
    models: tuple[ModelInfo, ...] = ()
    """Models present, each with its state; empty when down or not trustworthy."""
    load: LoadStats = field(default_factory=LoadStats)
    speed: float | None = None
    """Measured decode speed relative to the reference (``agent.speed``); ``None``: unknown."""
    failures: tuple[ModelFailure, ...] = ()
    """Failed loads/unloads (the executor's overlay adds them; adapters leave it empty)."""


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
