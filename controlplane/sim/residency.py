"""The fake server's GPU memory and sleep mode: what it can load on demand (``--available``),
which weights are resident, and whether it sleeps. No HTTP and no waiting here: ``app``
turns outcomes into answers and ``lora`` takes the load time.

- Memory: the base model's weights (``--weights-gib``) plus every available model loaded
  or loading take GPU memory; a load that does not fit ``total - resident`` is refused
  (``LoraRefused`` 500, the CUDA out-of-memory message vLLM would relay: need and free
  GiB). An unload frees its weights at once.
- Load time: an available model takes its own (``NAME:GB:MS``), else ``default_load_ms``
  (``--load-time-ms``, a runtime knob); any other name is a plain LoRA adapter
  (``--lora-load-ms``, no memory accounted).
- Sleep (vLLM's ``--enable-sleep-mode``): level 1 offloads the weights to CPU memory (the
  GPU keeps none), a wake takes ``wake_ms``; level 2 discards them, a wake reloads them:
  ``wake_ms`` plus the cold-start time of the base model plus the load time of every
  resident available model. The KV cache is dropped at either level. ``tags`` wake
  ``weights`` and ``kv_cache`` separately (as vLLM's ``wake_up?tags=``); the server sleeps
  until both are awake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controlplane.sim.lora import LoraRefused
from controlplane.sim.simgpu import GiB

TAGS = ("weights", "kv_cache")
"""What a vLLM wake-up can restore, one at a time or together."""
DEFAULT_LOAD_MS = 20_000.0
"""Load time of an available model without its own: a scaled-down real load (an 8B model
from local NVMe takes 20-60 s)."""
DEFAULT_WAKE_MS = 500.0
"""Level-1 wake time (vLLM measures 0.26-0.82 s for 0.6B-8B models)."""


@dataclass(frozen=True, slots=True)
class AvailableSpec:
    """One ``--available`` entry: ``NAME[:MEM_GIB[:LOAD_MS]]``."""

    name: str
    mem_bytes: int | None = None
    """GPU memory its weights take; ``None``: as much as the base model's."""
    load_ms: float | None = None
    """Its load time; ``None``: the server's default (``--load-time-ms``)."""


def parse_available(text: str) -> tuple[AvailableSpec, ...]:
    """``"a:8:1500,b:4,c"`` -> specs; ``ValueError`` says what is wrong."""
    out: dict[str, AvailableSpec] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, *rest = item.split(":")
        if not name or len(rest) > 2:
            raise ValueError(f"expected NAME[:MEM_GIB[:LOAD_MS]], got {item!r}")
        try:
            mem = float(rest[0]) if rest and rest[0] else None
            ms = float(rest[1]) if len(rest) > 1 and rest[1] else None
        except ValueError:
            raise ValueError(f"{item!r}: memory and load time must be numbers") from None
        if (mem is not None and not 0 <= mem < 1e6) or (ms is not None and not 0 <= ms < 1e9):
            raise ValueError(f"{item!r}: memory and load time must be >= 0 and finite")
        if name in out:
            raise ValueError(f"{name!r} is listed twice")
        out[name] = AvailableSpec(name, None if mem is None else int(mem * GiB), ms)
    return tuple(out.values())


class Residency:
    """One fake server's resident weights and sleep state. Call from the loop's thread."""

    def __init__(
        self,
        total_bytes: int,
        base_bytes: int,
        available: Iterable[AvailableSpec] = (),
        default_load_ms: float = DEFAULT_LOAD_MS,
        wake_ms: float = DEFAULT_WAKE_MS,
        base_load_ms: float = 0.0,
    ) -> None:
        self.total_bytes = total_bytes
        self.base_bytes = base_bytes
        self.available = MappingProxyType({s.name: s for s in available})
        self.default_load_ms = default_load_ms
        """Load time of an available model without its own (a runtime knob)."""
        self.wake_ms = wake_ms
        """Level-1 wake time (a runtime knob)."""
        self.base_load_ms = base_load_ms
        """The base model's load time, part of a level-2 wake."""
        self._resident: dict[str, int] = {}
        self.level = 0
        """0 awake; else the level it was put to sleep at."""
        self.asleep: set[str] = set()
        """The ``TAGS`` still asleep."""

    @property
    def resident(self) -> Mapping[str, int]:
        """Available model -> bytes, loaded or loading (a read-only view)."""
        return MappingProxyType(self._resident)

    @property
    def sleeping(self) -> bool:
        return bool(self.asleep)

    def mem_of(self, name: str) -> int:
        spec = self.available[name]
        return self.base_bytes if spec.mem_bytes is None else spec.mem_bytes

    def load_ms_of(self, name: str) -> float:
        spec = self.available[name]
        return self.default_load_ms if spec.load_ms is None else spec.load_ms

    @property
    def weights_bytes(self) -> int:
        """Weights on the GPU now (none while the weights sleep)."""
        if "weights" in self.asleep:
            return 0
        return self.base_bytes + sum(self._resident.values())

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.base_bytes - sum(self._resident.values()))

    # -- lora.Weights ------------------------------------------------------------------
    def reserve(self, name: str) -> float | None:
        """Take the memory of available ``name``; its load time in ms. ``None`` for a name
        that is not available (a plain LoRA adapter: the adapters' own load time)."""
        if name not in self.available:
            return None
        need, free = self.mem_of(name), self.free_bytes
        if need > free:
            raise LoraRefused(
                500,
                f"CUDA out of memory: loading '{name}' needs {need / GiB:.2f} GiB, "
                f"{free / GiB:.2f} GiB free of {self.total_bytes / GiB:.2f} GiB",
                "InternalServerError",
            )
        self._resident[name] = need
        return self.load_ms_of(name)

    def release(self, name: str) -> None:
        self._resident.pop(name, None)

    # -- sleep -------------------------------------------------------------------------
    def sleep(self, level: int) -> None:
        """Put the weights and the KV cache to sleep (again: only a deeper level counts)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self.level = max(self.level, level) if self.asleep else level
        self.asleep = set(TAGS)

    def wake_ms_for(self, tags: Iterable[str]) -> float:
        """How long waking ``tags`` takes now (0 when the weights are not among them)."""
        if "weights" not in tags or "weights" not in self.asleep:
            return 0.0
        if self.level < 2:
            return self.wake_ms
        return self.wake_ms + self.base_load_ms + sum(self.load_ms_of(n) for n in self._resident)

    def wake(self, tags: Iterable[str]) -> None:
        self.asleep -= set(tags)
        if not self.asleep:
            self.level = 0

    def listing(self, loaded: Iterable[str]) -> list[dict[str, object]]:
        """The ``GET /sim/available`` entries."""
        done = set(loaded)
        return [
            {
                "name": name,
                "mem_bytes": self.mem_of(name),
                "load_s": self.load_ms_of(name) / 1000.0,
                "wake_s": self.wake_ms / 1000.0,
                "loaded": name in done,
                "loading": name in self._resident and name not in done,
            }
            for name in self.available
        ]


def parse_tags(values: list[str]) -> tuple[str, ...]:
    """``wake_up?tags=...`` (repeated or comma-separated); none: all. ``ValueError`` if unknown."""
    tags = [t.strip() for v in values for t in v.split(",") if t.strip()]
    bad = sorted(set(tags) - set(TAGS))
    if bad:
        raise ValueError(f"unknown tag(s) {bad}; known: {list(TAGS)}")
    return tuple(tags) or TAGS
