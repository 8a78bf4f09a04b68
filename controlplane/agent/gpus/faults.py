"""GPU faults latch until an operator clears them: the latch, the clear key, and its watcher.

A GPU source reports a fault (XID, new uncorrectable ECC error, remapped-row failure, GPU
lost) the moment it sees it, but some of those are one-shot signals (an XID event arrives
once). ``FaultLatch`` keeps a GPU faulty from then on, so its replica stays out of EDS
until the agent restarts or an operator clears it.

Clearing: the API writes the time of the request (seconds since the epoch, as text) at
``fault_clear_key(node)`` = ``aixds:v1:fault-clear:<node>`` (intent: never expires).
``FaultClearWatcher.check()`` reads that key at most once per ``every_s`` and, when the
stamp is newer than the last one applied, clears every fault latched at or before it. A
condition that is still present (a remapped-row failure, a lost GPU) latches again on the
next read, with a newer time; so does any fault that happens after the clear.

The stamp is compared with the agent's wall clock, so clock skew between the API and the
agent only matters for a fault that happens within the skew of the clear itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from controlplane.fleet.schema import PREFIX, fault_clear_key

log = logging.getLogger(__name__)

FAULT_CLEAR_PREFIX = PREFIX + "fault-clear:"
__all__ = ["FAULT_CLEAR_PREFIX", "fault_clear_key"]


def format_clear_stamp(now: float) -> str:
    """The value the API writes at ``fault_clear_key``: ``repr`` of the epoch seconds."""
    return repr(float(now))


def parse_clear_stamp(raw: object) -> float | None:
    """A stamp read from Redis (``str`` or ``bytes``), or ``None`` if absent or not a time."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str) or len(raw) > 64:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class Latched:
    """One latched fault: the first reason seen, and when (agent wall clock)."""

    reason: str
    since: float


class FaultLatch:
    """Per-GPU fault memory; safe to use from a reader thread and the event loop at once."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._latched: dict[str, Latched] = {}

    def observe(self, key: str, reason: str | None) -> tuple[str | None, bool]:
        """Record what a read saw for GPU ``key`` (``None``: no fault now).

        Returns the latched reason (``None`` if the GPU is not faulty) and whether it
        latched just now. The first reason stays until cleared.
        """
        with self._lock:
            held = self._latched.get(key)
            if held is not None:
                return held.reason, False
            if not reason:
                return None, False
            self._latched[key] = Latched(reason, self._clock())
            return reason, True

    def clear(self, before: float) -> list[str]:
        """Forget faults latched at or before ``before``; return the keys cleared."""
        with self._lock:
            gone = [k for k, v in self._latched.items() if v.since <= before]
            for k in gone:
                del self._latched[k]
        return gone

    def snapshot(self) -> dict[str, Latched]:
        with self._lock:
            return dict(self._latched)


@runtime_checkable
class FaultClearable(Protocol):
    """A GPU source whose latched faults an operator may clear."""

    def clear_faults(self, before: float) -> list[str]:
        """Clear faults latched at or before ``before`` (epoch s); return the GPU keys."""
        ...


class FaultClearWatcher:
    """Applies the operator's fault clears for one node to its GPU sources.

    ``get`` reads one key (``redis.asyncio.Redis.get``); ``sources`` is the GPU sources,
    or a function returning the current ones (servers come and go with discovery); those
    without ``clear_faults`` are skipped, a source shared by several servers is cleared
    once. ``check()`` is cheap to call on every probe: it reads Redis at most once per
    ``every_s`` and never raises. ``run()`` calls it forever, for a supervised task.
    """

    def __init__(
        self,
        get: Callable[[str], Awaitable[Any]],
        node: str,
        sources: Iterable[object] | Callable[[], Iterable[object]],
        *,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get = get
        self.key = fault_clear_key(node)
        self._sources = sources if callable(sources) else list(sources)
        self._every_s = every_s
        self._clock = clock
        self._next = 0.0
        self._applied: float | None = None
        self._failing = False
        self._bad: object = None

    def _clearables(self) -> list[FaultClearable]:
        found = self._sources() if callable(self._sources) else self._sources
        out: dict[int, FaultClearable] = {}
        for s in found:
            if isinstance(s, FaultClearable):
                out.setdefault(id(s), s)
        return list(out.values())

    async def run(self) -> None:
        """Check every ``every_s``, forever."""
        while True:
            await self.check()
            await asyncio.sleep(self._every_s)

    async def check(self) -> list[str]:
        """Apply a new clear stamp if there is one; return the GPU keys cleared."""
        now = self._clock()
        if now < self._next:
            return []
        sources = self._clearables()
        if not sources:
            return []
        self._next = now + self._every_s  # before the await: concurrent callers skip
        try:
            raw = await self._get(self.key)
        except Exception as e:  # Redis down: the publishers say so; retry next period
            if not self._failing:
                log.warning("cannot read %s (%s: %s); retrying", self.key, type(e).__name__, e)
            self._failing = True
            return []
        self._failing = False
        stamp = parse_clear_stamp(raw)
        if stamp is None:
            if raw is not None and raw != self._bad:
                log.warning("ignoring %s: %r is not a time in epoch seconds", self.key, raw)
                self._bad = raw
            return []
        if self._applied is not None and stamp <= self._applied:
            return []
        self._applied = stamp
        cleared: list[str] = []
        for src in sources:
            cleared += src.clear_faults(stamp)
        if cleared:
            log.info("operator cleared GPU faults latched before %.3f: %s", stamp, cleared)
        return cleared
