"""The fake server's runtime LoRA adapters, as vLLM keeps them with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. No HTTP here: ``app`` turns outcomes into answers.

- ``load(name, path)`` takes ``load_ms``; only then is the adapter listed (vLLM lists it
  once ``add_lora`` returned). A name already loaded is refused (400), and so are empty
  fields. ``fail_loads`` > 0 makes the next loads fail after their delay (500).
- ``unload(name)`` forgets the adapter at once; an unknown name is refused (404).
- One load or unload per name at a time: a second call for that name waits for the
  first (vLLM locks per name), then sees its outcome ("already loaded", "cannot be found").
- ``forget_all`` is a server restart: adapters are lost, and loads in flight fail.
- With ``weights`` (``residency.Residency``), a load first takes GPU memory (refused when
  it does not fit) and may take its own load time; an unload or a failed load frees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Adapter:
    """One loaded adapter, as ``/v1/models`` lists it."""

    name: str
    path: str
    created: int
    """Unix time it finished loading."""


class LoraRefused(Exception):
    """A load or unload that vLLM would answer with an error: status, message, type."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class Weights(Protocol):
    """GPU memory for what is loaded (``residency.Residency``)."""

    def reserve(self, name: str) -> float | None:
        """Take memory for ``name``; its load time in ms, or ``None`` for the adapters'
        own. ``LoraRefused`` when it does not fit."""
        ...

    def release(self, name: str) -> None: ...


class LoraAdapters:
    """The adapters of one fake server. Call from the event loop's thread only."""

    def __init__(
        self, load_ms: float = 500.0, fail_loads: int = 0, weights: Weights | None = None
    ) -> None:
        self.load_ms = load_ms
        """How long a load takes (a runtime knob)."""
        self.fail_loads = fail_loads
        """Answer this many further loads with 500 (counts down)."""
        self.load_calls = 0
        self.unload_calls = 0
        self._loaded: dict[str, Adapter] = {}
        self._busy: dict[str, asyncio.Event] = {}
        self._epoch = 0
        self._weights = weights

    @property
    def loaded(self) -> Mapping[str, Adapter]:
        """Name -> adapter, in load order (a read-only view)."""
        return MappingProxyType(self._loaded)

    @property
    def in_progress(self) -> list[str]:
        """Names with a load or unload in progress."""
        return list(self._busy)

    async def load(self, name: str, path: str) -> None:
        """Load ``name`` from ``path``; ``LoraRefused`` with vLLM's answer when it cannot."""
        self.load_calls += 1
        if not name or not path:
            raise LoraRefused(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        async with self._turn(name):
            if name in self._loaded:
                raise LoraRefused(
                    400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
                )
            epoch = self._epoch
            own_ms = None if self._weights is None else self._weights.reserve(name)
            try:
                await asyncio.sleep((self.load_ms if own_ms is None else own_ms) / 1000.0)
                self._check_load(name, path, epoch)
            except BaseException:
                if self._weights is not None:
                    self._weights.release(name)
                raise
            self._loaded[name] = Adapter(name, path, int(time.time()))

    def _check_load(self, name: str, path: str, epoch: int) -> None:
        if epoch != self._epoch:
            raise LoraRefused(
                500,
                f"Loading LoRA adapter '{name}' was aborted: the server restarted",
                "InternalServerError",
            )
        if self.fail_loads > 0:
            self.fail_loads -= 1
            raise LoraRefused(
                500,
                f"Failed to load LoRA adapter '{name}' from {path}: "
                "injected fault (lora_fail_loads)",
                "InternalServerError",
            )

    async def unload(self, name: str) -> None:
        """Unload ``name``; ``LoraRefused`` (404) when it is not loaded."""
        self.unload_calls += 1
        if not name:
            raise LoraRefused(
                400,
                "either 'lora_name' and 'lora_int_id' needs to be provided.",
                "InvalidUserInput",
            )
        async with self._turn(name):
            if self._loaded.pop(name, None) is None:
                raise LoraRefused(
                    404, f"The lora adapter '{name}' cannot be found.", "NotFoundError"
                )
            if self._weights is not None:
                self._weights.release(name)

    def forget_all(self) -> None:
        """A restart: every adapter is gone and loads in flight will fail."""
        if self._weights is not None:
            for name in self._loaded:
                self._weights.release(name)
        self._loaded.clear()
        self._epoch += 1

    @contextlib.asynccontextmanager
    async def _turn(self, name: str) -> AsyncIterator[None]:
        while (busy := self._busy.get(name)) is not None:
            await busy.wait()
        done = self._busy[name] = asyncio.Event()
        try:
            yield
        finally:
            del self._busy[name]
            done.set()
