"""The model-server calls that load and unload models: the ``Loader`` Protocol and its kinds.

- vLLM: LoRA adapters, ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` with
  ``lora_name`` (the model) and ``lora_path``. The server must run with
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. A new ``path`` reloads (unload, then load).
  An entry without ``path`` for a model the server lists as available (``Probe.available``:
  the fake's ``/sim/available`` or ``--available``) loads with the model name as path.
  Sleep: ``POST /sleep?level=1`` / ``POST /wake_up`` (``VLLM_SERVER_DEV_MODE=1`` and
  ``--enable-sleep-mode``; without them, a permanent error: the server stays awake).
- SGLang: cannot load at runtime; sleeps with ``POST /release_memory_occupation`` and
  wakes with ``POST /resume_memory_occupation`` (both with ``{}``: every tag).
- Triton: ``POST /v2/repository/models/<model>/load`` / ``unload`` (explicit model-control
  mode: ``--model-control-mode=explicit``).
- Ollama: ``POST /api/generate`` with no prompt and ``keep_alive`` (load: the desired
  value, ``-1`` by default; unload: ``0``); a model that is not pulled fails (404).

Triton, Ollama, TGI and TensorRT-LLM cannot sleep (``can_sleep`` False): the executor
never asks them to, and their models stay loaded. Every call raises ``LoadError`` on
failure. A ``permanent`` one (the entry lacks what the
kind needs) is not retried until the desired entry changes; the others are retried with
backoff, since a server restarted with the right flags, or a model pulled meanwhile,
makes the same call succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from controlplane.agent.placement.desired import Desired
from controlplane.agent.servers.scrape import Reply, failure, fetch
from controlplane.fleet.model import ServerKind

MAX_ERROR = 300
"""Longest server message kept in an error (a server may answer a whole HTML page)."""


class LoadError(Exception):
    """A load or unload that did not happen, with the server's reason."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Loader(Protocol):
    """Loads, unloads, puts to sleep and wakes models on one model server."""

    @property
    def can_load(self) -> bool:
        """The kind loads and unloads at runtime."""
        ...

    @property
    def can_sleep(self) -> bool:
        """The kind sleeps (weights off the GPU, back in about a second)."""
        ...

    async def load(self, want: Desired) -> None: ...

    async def unload(self, want: Desired) -> None: ...

    async def reload(self, want: Desired) -> None:
        """Load ``want`` again with its new ``path`` in place of the loaded one."""
        ...

    async def sleep(self) -> None:
        """Put the whole server to sleep (every model on it)."""
        ...

    async def wake(self) -> None: ...


def server_message(reply: Reply | Exception) -> str:
    """What went wrong, from the body's ``message``/``error``/``detail`` (also nested in an
    ``error`` object) if it has one."""
    if isinstance(reply, Exception):
        return failure(reply)
    try:
        doc: Any = reply.json()
    except ValueError:
        doc = None
    text = reply.text.strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        doc = doc["error"]  # newer vLLM / OpenAI style: {"error": {"message": ...}}
    if isinstance(doc, dict):
        for key in ("message", "error", "detail"):
            if isinstance(doc.get(key), str):
                text = doc[key]
                break
    return f"HTTP {reply.status}: {text[:MAX_ERROR]}" if text else f"HTTP {reply.status}"


class _Http:
    def __init__(self, base_url: str, client: httpx.AsyncClient, wait_s: float) -> None:
        self.base = base_url.rstrip("/")
        self.client = client
        self.wait_s = wait_s

    async def post(self, path: str, body: Any) -> Reply | Exception:
        return await fetch(self.client, "POST", self.base + path, body=body, wait_s=self.wait_s)


class _CannotSleep:
    can_sleep = False

    async def sleep(self) -> None:
        raise LoadError("this server kind cannot sleep", permanent=True)

    async def wake(self) -> None:
        raise LoadError("this server kind cannot sleep", permanent=True)


async def _sleep_call(http: _Http, path: str, body: Any, what: str, hint: str) -> None:
    reply = await http.post(path, body)
    if isinstance(reply, Reply) and reply.status == 200:
        return
    off = isinstance(reply, Reply) and reply.status in (404, 405)
    raise LoadError(f"{what}: {server_message(reply)}{hint if off else ''}", permanent=off)


class VllmLoraLoader:
    """vLLM's runtime LoRA API and sleep mode. Implements ``Loader``. ``available`` says
    which models the server can load by name alone (its latest probe's list)."""

    can_load = True
    can_sleep = True
    SLEEP_HINT = " (is vLLM running with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode?)"

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        wait_s: float,
        available: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self._http = _Http(base_url, client, wait_s)
        self._available = available

    async def load(self, want: Desired) -> None:
        path = want.path or (want.model if want.model in self._available() else "")
        if not path:
            raise LoadError(
                "vLLM loads LoRA adapters: the desired entry needs 'path' (or the model "
                "must be in the server's available list)",
                permanent=True,
            )
        body = {"lora_name": want.model, "lora_path": path}
        reply = await self._http.post("/v1/load_lora_adapter", body)
        if isinstance(reply, Reply) and reply.status == 200:
            return
        msg = server_message(reply)
        if "already" in msg and "loaded" in msg:
            return  # loaded meanwhile (by us before a restart, or by hand)
        raise LoadError(f"load_lora_adapter: {msg}{_hint(reply)}")

    async def unload(self, want: Desired) -> None:
        reply = await self._http.post("/v1/unload_lora_adapter", {"lora_name": want.model})
        if isinstance(reply, Reply) and reply.status == 200:
            return
        msg = server_message(reply)
        gone = "not found" in msg.lower() or "cannot be found" in msg.lower()
        if (
            isinstance(reply, Reply)
            and reply.status in (400, 404)
            and gone
            and not _disabled(reply)
        ):
            return  # already gone
        raise LoadError(f"unload_lora_adapter: {msg}{_hint(reply)}")

    async def reload(self, want: Desired) -> None:
        await self.unload(want)
        await self.load(want)

    async def sleep(self) -> None:
        await _sleep_call(self._http, "/sleep?level=1", None, "sleep", self.SLEEP_HINT)

    async def wake(self) -> None:
        await _sleep_call(self._http, "/wake_up", None, "wake_up", self.SLEEP_HINT)


class SglangLoader:
    """SGLang: sleeps (releases its GPU memory), cannot load. Implements ``Loader``."""

    can_load = False
    can_sleep = True
    HINT = " (an SGLang without the memory-occupation API: too old?)"

    def __init__(self, base_url: str, client: httpx.AsyncClient, wait_s: float) -> None:
        self._http = _Http(base_url, client, wait_s)

    async def load(self, want: Desired) -> None:
        raise LoadError("SGLang cannot load models at runtime", permanent=True)

    async def unload(self, want: Desired) -> None:
        raise LoadError("SGLang cannot unload models at runtime", permanent=True)

    async def reload(self, want: Desired) -> None:
        await self.load(want)

    async def sleep(self) -> None:
        await _sleep_call(
            self._http, "/release_memory_occupation", {}, "release_memory_occupation", self.HINT
        )

    async def wake(self) -> None:
        await _sleep_call(
            self._http, "/resume_memory_occupation", {}, "resume_memory_occupation", self.HINT
        )


def _hint(reply: Reply | Exception) -> str:
    if _disabled(reply):
        return " (is the server running with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?)"
    return ""


def _disabled(reply: Reply | Exception) -> bool:
    """vLLM answers a bare 404 when runtime LoRA updating is off (the route is missing)."""
    if not isinstance(reply, Reply) or reply.status not in (404, 405):
        return False
    try:
        doc = reply.json()
    except ValueError:
        return True
    return isinstance(doc, dict) and doc.get("detail") in ("Not Found", "Method Not Allowed")


class TritonLoader(_CannotSleep):
    """Triton's model-repository API. Implements ``Loader``."""

    can_load = True

    def __init__(self, base_url: str, client: httpx.AsyncClient, wait_s: float) -> None:
        self._http = _Http(base_url, client, wait_s)

    async def load(self, want: Desired) -> None:
        await self._call(want.model, "load")

    async def unload(self, want: Desired) -> None:
        await self._call(want.model, "unload")

    async def reload(self, want: Desired) -> None:
        await self._call(want.model, "load")  # Triton reloads a loaded model in place

    async def _call(self, model: str, op: str) -> None:
        reply = await self._http.post(f"/v2/repository/models/{quote(model, safe='')}/{op}", {})
        if isinstance(reply, Reply) and reply.status == 200:
            return
        msg = server_message(reply)
        hint = (
            " (is Triton running with --model-control-mode=explicit?)" if "allowed" in msg else ""
        )
        raise LoadError(f"repository {op}: {msg}{hint}")


class OllamaLoader(_CannotSleep):
    """Ollama's ``keep_alive`` on ``/api/generate``. Implements ``Loader``."""

    can_load = True

    def __init__(self, base_url: str, client: httpx.AsyncClient, wait_s: float) -> None:
        self._http = _Http(base_url, client, wait_s)

    async def load(self, want: Desired) -> None:
        await self._generate(want.model, _keep_alive(want.keep_alive), "load")

    async def unload(self, want: Desired) -> None:
        await self._generate(want.model, 0, "unload")

    async def reload(self, want: Desired) -> None:
        await self.load(want)

    async def _generate(self, model: str, keep_alive: int | str, op: str) -> None:
        body = {"model": model, "keep_alive": keep_alive, "stream": False}
        reply = await self._http.post("/api/generate", body)
        if isinstance(reply, Reply) and reply.status == 200:
            return
        raise LoadError(f"{op} via /api/generate: {server_message(reply)}")


def _keep_alive(value: str) -> int | str:
    """Ollama takes seconds as a number and durations as strings."""
    try:
        return int(value)
    except ValueError:
        return value


def make_loader(
    kind: ServerKind,
    base_url: str,
    client: httpx.AsyncClient,
    wait_s: float,
    available: Callable[[], Collection[str]] = frozenset,
) -> Loader | None:
    """The loader for a server kind, or ``None`` if that kind can neither load nor sleep
    at runtime (TGI, TensorRT-LLM). ``available``: vLLM's loads by name (see above)."""
    if kind is ServerKind.VLLM:
        return VllmLoraLoader(base_url, client, wait_s, available)
    if kind is ServerKind.SGLANG:
        return SglangLoader(base_url, client, wait_s)
    if kind is ServerKind.TRITON:
        return TritonLoader(base_url, client, wait_s)
    if kind is ServerKind.OLLAMA:
        return OllamaLoader(base_url, client, wait_s)
    return None
