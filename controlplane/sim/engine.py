"""The fake model server's engine: continuous batching on asyncio timers, no HTTP.

A request becomes a ``Seq``. It waits in a FIFO queue until a slot is free (at most
``max_running`` sequences, and enough KV cache for its prompt), spends ``ttft_ms`` in
prefill, then gains one token per decode step of ``tpot_ms`` (both divided by ``speed``)
until it has ``max_tokens``. One timer drives the decode steps of every running sequence,
as one forward pass of a real engine does, so the cost per request stays small. When more
requests arrive than it can run, the queue and every request's latency grow.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Knobs:
    """Simulation settings. All of them may change while the engine runs."""

    max_running: int = 8
    """Sequences in the batch at once (vLLM's ``--max-num-seqs``)."""
    max_queue: int = 1000
    """Waiting sequences beyond which a new request is refused (the server answers 503)."""
    ttft_ms: float = 30.0
    """Prefill: from leaving the queue to the first token, at speed 1."""
    tpot_ms: float = 10.0
    """One decode step (one token for every running sequence), at speed 1."""
    speed: float = 1.0
    """Throughput factor: 2.0 halves every delay."""
    kv_capacity_tokens: int = 65536
    """KV-cache size in tokens. Use = running sequences' tokens / capacity."""
    stall: bool = False
    """A hung GPU: no sequence makes progress until this is cleared."""


class Overloaded(Exception):
    """The waiting queue is full."""


class Finish(enum.StrEnum):
    """Why a sequence ended (vLLM's ``finished_reason``)."""

    LENGTH = "length"
    ABORT = "abort"


@dataclass(eq=False, slots=True)
class Seq:
    """One request inside the engine. Times are the event loop's clock."""

    prompt_tokens: int
    max_tokens: int
    arrived: float
    generated: int = 0
    started: float | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    finished_at: float | None = None
    finish: Finish | None = None
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)
    _prefill: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    async def wait_beyond(self, seen: int) -> int:
        """Wait until more than ``seen`` tokens exist or the sequence ended; return the count."""
        while self.generated <= seen and self.finish is None:
            self._progress.clear()
            await self._progress.wait()
        return self.generated

    async def wait_done(self) -> None:
        await self._ended.wait()


@dataclass(slots=True)
class Totals:
    """Monotonic counters, as the server's Prometheus counters report them."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[Finish, int] = field(default_factory=lambda: dict.fromkeys(Finish, 0))


class Engine:
    """Schedules sequences; call its methods from the event loop's thread only."""

    def __init__(self, knobs: Knobs, on_finish: Callable[[Seq], None] | None = None) -> None:
        self.knobs = knobs
        self.totals = Totals()
        self._on_finish = on_finish
        self._waiting: collections.deque[Seq] = collections.deque()
        self._running: dict[Seq, None] = {}
        self._decoding: dict[Seq, None] = {}
        self._kv_tokens = 0
        self._step: asyncio.TimerHandle | None = None

    # -- what the server reports ------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        return min(1.0, self._kv_tokens / max(1, self.knobs.kv_capacity_tokens))

    # -- requests -----------------------------------------------------------------------
    def submit(self, prompt_tokens: int, max_tokens: int) -> Seq:
        """Queue a request; raises ``Overloaded`` when the waiting queue is full."""
        loop = asyncio.get_running_loop()
        seq = Seq(
            prompt_tokens=max(1, prompt_tokens), max_tokens=max(1, max_tokens), arrived=loop.time()
        )
        self._waiting.append(seq)
        self._admit()
        if seq.started is None and len(self._waiting) > self.knobs.max_queue:
            self._waiting.pop()
            raise Overloaded(f"{self.knobs.max_queue} requests already waiting")
        return seq

    def abort(self, seq: Seq) -> None:
        """End a sequence early (client gone, server reloading). No-op once it ended."""
        if seq.finish is None:
            self._end(seq, Finish.ABORT)

    def abort_all(self) -> None:
        for seq in [*self._waiting, *self._running]:
            self.abort(seq)

    def poke(self) -> None:
        """Re-read the knobs: admit from the queue, restart decoding after a stall."""
        self._admit()
        self._schedule_step()

    def close(self) -> None:
        self.abort_all()
        if self._step is not None:
            self._step.cancel()
            self._step = None

    # -- scheduling ---------------------------------------------------------------------
    def _admit(self) -> None:
        k = self.knobs
        while self._waiting and len(self._running) < k.max_running:
            head = self._waiting[0]
            if self._running and self._kv_tokens + head.prompt_tokens > k.kv_capacity_tokens:
                return
            self._waiting.popleft()
            self._start(head)

    def _start(self, seq: Seq) -> None:
        loop = asyncio.get_running_loop()
        seq.started = loop.time()
        self._running[seq] = None
        self._kv_tokens += seq.prompt_tokens
        delay = self.knobs.ttft_ms / 1000.0 / self.knobs.speed
        seq._prefill = loop.call_later(delay, self._prefilled, seq)

    def _prefilled(self, seq: Seq) -> None:
        seq._prefill = None
        self.totals.prompt_tokens += seq.prompt_tokens
        self._decoding[seq] = None
        if not self.knobs.stall:
            self._emit(seq, asyncio.get_running_loop().time())
        self._schedule_step()

    def _schedule_step(self) -> None:
        if self._step is None and self._decoding:
            delay = self.knobs.tpot_ms / 1000.0 / self.knobs.speed
            self._step = asyncio.get_running_loop().call_later(delay, self._decode_step)

    def _decode_step(self) -> None:
        self._step = None
        if not self.knobs.stall:
            now = asyncio.get_running_loop().time()
            # A sequence whose first token came less than half a step ago waits one more.
            min_gap = self.knobs.tpot_ms / 2000.0 / self.knobs.speed
            for seq in list(self._decoding):
                if seq.first_token_at is None or now - seq.last_token_at >= min_gap:
                    self._emit(seq, now)
        self._schedule_step()

    def _emit(self, seq: Seq, now: float) -> None:
        seq.generated += 1
        seq.last_token_at = now
        if seq.first_token_at is None:
            seq.first_token_at = now
        self._kv_tokens += 1
        self.totals.generation_tokens += 1
        seq._progress.set()
        if seq.generated >= seq.max_tokens:
            self._end(seq, Finish.LENGTH)

    def _end(self, seq: Seq, why: Finish) -> None:
        if seq in self._running:
            del self._running[seq]
            self._decoding.pop(seq, None)
            self._kv_tokens -= seq.prompt_tokens + seq.generated
        else:
            # Still queued; a deque removal is O(n) but aborts from the queue are rare.
            self._waiting.remove(seq)
        if seq._prefill is not None:
            seq._prefill.cancel()
            seq._prefill = None
        seq.finish = why
        seq.finished_at = asyncio.get_running_loop().time()
        seq._progress.set()
        seq._ended.set()
        self.totals.finished[why] += 1
        if self._on_finish is not None:
            self._on_finish(seq)
        self._admit()
