"""What a model server can load on demand, and whether it sleeps: read beside each probe.

``OnDemand`` wraps a kind's adapter (it implements ``ModelServerAdapter`` too) and adds to
each probe the server's available models (``Probe.available``) and its sleep state
(``Probe.sleeping``; a sleeping server's models are published ``sleeping``). Per kind:

- vLLM: the fake server's ``GET /sim/available`` when it answers; real vLLM has no listing
  API, so else the agent's ``--available SERVER=MODEL[:GB[:LOAD_S]]``. Sleep state from
  ``GET /is_sleeping`` (vLLM with ``VLLM_SERVER_DEV_MODE=1 --enable-sleep-mode``; without,
  it answers 404 and the server counts as awake).
- Ollama: ``GET /api/tags`` (the pulled models, ``size`` as their memory).
- Triton: ``POST /v2/repository/index`` (every model of the repository).
- SGLang, TGI, TensorRT-LLM: none; they cannot load at runtime. SGLang can sleep but has
  no query for it: the executor knows (``Probe.sleeping`` stays ``None``).

For Ollama and Triton, ``--available`` entries of the same name fill in what the server
does not say (memory, load time). The listing is read again every ``refresh_s`` (the
sleep state at every probe). The executor replaces ``load_s`` by the load it measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import httpx

from controlplane.agent.servers.adapter import ModelServerAdapter, Probe
from controlplane.agent.servers.scrape import Reply, fetch, json_of, valid_name
from controlplane.fleet.codec import MAX_MODELS
from controlplane.fleet.model import AvailableModel, ModelState, ServerKind

REFRESH_S = 5.0
"""Read a server's list of available models this often."""
LISTS = frozenset({ServerKind.VLLM, ServerKind.OLLAMA, ServerKind.TRITON})
"""Kinds that can load at runtime, so that an available list means something."""

Available = tuple[AvailableModel, ...]


def parse_configured(value: str) -> tuple[str, Available]:
    """One ``--available SERVER=MODEL[:GB[:LOAD_S]],...`` -> (server, models)."""
    server, sep, rest = value.partition("=")
    if not sep or not server or not rest:
        raise ValueError(f"--available expects SERVER=MODEL[:GB[:LOAD_S]],..., got {value!r}")
    out: dict[str, AvailableModel] = {}
    for item in (s.strip() for s in rest.split(",")):
        if not item:
            continue
        name, *nums = item.split(":")
        if not name or len(nums) > 2:
            raise ValueError(f"--available: expected MODEL[:GB[:LOAD_S]], got {item!r}")
        try:
            gb, load_s = (float(n) if n else 0.0 for n in [*nums, "", ""][:2])
        except ValueError:
            raise ValueError(f"--available {item!r}: GB and LOAD_S must be numbers") from None
        if not (0 <= gb < 1e6 and 0 <= load_s < 1e6):
            raise ValueError(f"--available {item!r}: GB and LOAD_S must be >= 0 and finite")
        out[name] = AvailableModel(name, mem_bytes=int(gb * (1 << 30)), load_s=load_s)
    return server, tuple(out.values())


def _num(doc: dict[str, Any], key: str, hi: float) -> float:
    v = doc.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= hi
    return float(v) if ok else 0.0  # type: ignore[arg-type]


def parse_sim_available(doc: Any) -> Available | None:
    """The fake server's ``/sim/available``; ``None`` if it is not that."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        return None
    out = []
    for m in doc["models"][:MAX_MODELS]:
        name = valid_name(m.get("name")) if isinstance(m, dict) else None
        if name is not None:
            assert isinstance(m, dict)
            out.append(
                AvailableModel(
                    name,
                    version=v if isinstance(v := m.get("version"), str) and len(v) <= 128 else "",
                    mem_bytes=int(_num(m, "mem_bytes", 2**50)),
                    load_s=_num(m, "load_s", 1e6),
                    wake_s=_num(m, "wake_s", 1e6),
                )
            )
    return tuple(out)


def parse_ollama_tags(doc: Any) -> Available | None:
    """Ollama's ``/api/tags`` (pulled models; ``size`` in bytes); ``None`` if not that."""
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        return None
    out = []
    for m in doc["models"][:MAX_MODELS]:
        if not isinstance(m, dict):
            continue
        name = valid_name(m.get("name")) or valid_name(m.get("model"))
        if name is not None:
            out.append(AvailableModel(name, mem_bytes=int(_num(m, "size", 2**50))))
    return tuple(out)


def parse_triton_index(doc: Any) -> Available | None:
    """Triton's repository index (every model it could load); ``None`` if not that."""
    if not isinstance(doc, list):
        return None
    out: dict[str, AvailableModel] = {}
    for m in doc[:MAX_MODELS]:
        name = valid_name(m.get("name")) if isinstance(m, dict) else None
        if name is not None:
            out.setdefault(name, AvailableModel(name))
    return tuple(out.values())


def merged(listed: Available | None, configured: Available) -> Available:
    """The server's list (``None``: it has none) with the configured estimates filling in
    what it does not say; the configured list alone when the server has none."""
    if listed is None:
        return configured
    conf = {a.name: a for a in configured}
    out = []
    for a in listed:
        c = conf.get(a.name)
        if c is not None:
            a = replace(
                a,
                mem_bytes=a.mem_bytes or c.mem_bytes,
                load_s=a.load_s or c.load_s,
                wake_s=a.wake_s or c.wake_s,
            )
        out.append(a)
    return tuple(out)


def parse_is_sleeping(reply: Reply | Exception) -> bool | None:
    """vLLM's ``/is_sleeping``: ``None`` when it does not say (no sleep API)."""
    doc = json_of(reply)
    if isinstance(doc, dict) and isinstance(doc.get("is_sleeping"), bool):
        return bool(doc["is_sleeping"])
    return None


class OnDemand:
    """An adapter plus the server's available models and sleep state. Implements
    ``ModelServerAdapter``."""

    def __init__(
        self,
        inner: ModelServerAdapter,
        base_url: str,
        client: httpx.AsyncClient,
        configured: Iterable[AvailableModel] = (),
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._base = base_url.rstrip("/")
        self._client = client
        self._configured = tuple(configured)
        self._refresh_s = refresh_s
        self._clock = clock
        self._available: Available = ()
        self._read_at = -float("inf")

    @property
    def kind(self) -> ServerKind:
        return self.inner.kind

    async def probe(self) -> Probe:
        probe, available, sleeping = await asyncio.gather(
            self.inner.probe(), self._listing(), self._sleeping()
        )
        if not probe.reachable:
            return probe
        models = probe.models
        if sleeping:
            models = tuple(replace(m, state=ModelState.SLEEPING) for m in models)
        return replace(probe, models=models, available=available, sleeping=sleeping)

    async def _listing(self) -> Available:
        if self.kind not in LISTS:
            return ()
        now = self._clock()
        if now - self._read_at < self._refresh_s:
            return self._available
        self._read_at = now
        listed: Available | None = None
        if self.kind is ServerKind.VLLM:
            listed = parse_sim_available(json_of(await self._get("GET", "/sim/available")))
        elif self.kind is ServerKind.OLLAMA:
            listed = parse_ollama_tags(json_of(await self._get("GET", "/api/tags")))
        else:
            index = await self._get("POST", "/v2/repository/index", {})
            listed = parse_triton_index(json_of(index))
        if listed is None and self.kind is not ServerKind.VLLM:
            return self._available  # unreachable or nonsense: keep the last list
        self._available = merged(listed, self._configured)
        return self._available

    async def _sleeping(self) -> bool | None:
        if self.kind is not ServerKind.VLLM:
            return None
        return parse_is_sleeping(await self._get("GET", "/is_sleeping"))

    async def _get(self, method: str, path: str, body: Any = None) -> Reply | Exception:
        return await fetch(self._client, method, self._base + path, body=body)
