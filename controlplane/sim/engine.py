"""The fake model server's engine: continuous batching on asyncio timers, no HTTP.

The model, in the terms of a real engine such as vLLM:

- A request becomes a ``Seq`` and waits in a FIFO queue. It is admitted when fewer than
  ``max_running`` sequences run and its tokens fit in the KV cache: prompt (plus what it
  generated before a preemption) plus one token, less what the prefix cache already
  holds, within ``kv_capacity_tokens``. A full
  queue (``max_queue``) refuses new requests.
- Prefill takes ``ttft_ms + prompt_tokens / prefill_tps`` (at speed 1; only the tokens
  not found in the prefix cache, below); it ends with the first token.
- Decoding runs in steps; each step gives every decoding sequence one token and takes
  ``tpot_ms * (1 + batch_slowdown * (batch - 1))``, so per-token latency grows with the
  batch while throughput grows less than linearly. One timer drives all decode steps, as
  one forward pass does in a real engine, so the cost per request stays small.
- Every token a sequence holds (prompt and output) occupies the KV cache until it ends.
  When a step needs more KV than is free, the most recently admitted sequence is
  preempted (vLLM's recompute): it frees its KV, goes back to the head of the queue, and
  re-prefills its prompt and output when it is admitted again.
- Prefix caching (``prefix_caching``, see ``prefix_cache``): a request's prompt comes
  with the chained hashes of its full blocks. At admission the leading blocks already
  cached are reused: their tokens skip prefill, and their KV is shared with every other
  sequence that uses them (counted once). At least one prompt token is always computed
  (vLLM's rule: the last one gives the logits). When its prefill ends, a sequence's other
  full prompt blocks join the cache. Blocks of ended or preempted sequences stay cached
  without a reference and are evicted least recently used first when running sequences
  need the room; KV-cache use counts only referenced blocks and private tokens, as vLLM's
  does. A preempted sequence re-admitted reuses whatever of its prompt is still cached.
  The prefix-cache counters count each request once, at its first admission (vLLM counts
  a preempted request's second lookup apart and does not export it).
- Every delay is divided by the effective speed: ``speed`` (GPU generation) times
  ``1 - external_load`` (a noisy neighbour's share of the GPU) times ``THROTTLED_SPEED``
  while the GPU is thermally throttled. ``stall`` freezes all progress (a hung GPU).
- ``busy_fraction`` is the share of the last half second or so with at least one
  sequence running: the basis of the simulated GPU's utilization (``simgpu``).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.sim.prefix_cache import BLOCK_SIZE, BlockPool, block_hashes

THROTTLED_SPEED = 0.6
"""Speed factor while the simulated GPU is thermally throttled (clocks cut by ~40%)."""
MAX_EXTERNAL_LOAD = 0.95
"""Largest share of the GPU a noisy neighbour may take (the server keeps 5%)."""


@dataclass(slots=True)
class Knobs:
    """Simulation settings. All of them may change while the engine runs."""

    max_running: int = 8
    """Sequences in the batch at once (vLLM's ``--max-num-seqs``)."""
    max_queue: int = 1000
    """Waiting sequences beyond which a new request is refused (the server answers 503)."""
    ttft_ms: float = 30.0
    """Fixed part of prefill (from leaving the queue to the first token), at speed 1."""
    tpot_ms: float = 10.0
    """One decode step of a batch of one (one token per running sequence), at speed 1."""
    speed: float = 1.0
    """Throughput factor: 2.0 halves every delay."""
    kv_capacity_tokens: int = 65536
    """KV-cache size in tokens. Use = running sequences' tokens / capacity."""
    stall: bool = False
    """A hung GPU: no sequence makes progress until this is cleared."""
    prefill_tps: float = 20000.0
    """Prefill throughput in prompt tokens per second at speed 1 (0: no per-token cost)."""
    batch_slowdown: float = 0.02
    """A decode step takes ``tpot_ms * (1 + batch_slowdown * (batch - 1))``."""
    external_load: float = 0.0
    """Share of the GPU a noisy neighbour takes (0..0.95): everything runs that much slower."""
    gpu_throttle: bool = False
    """The simulated GPU is thermally throttled: speed times ``THROTTLED_SPEED``."""
    prefix_caching: bool = True
    """Automatic prefix caching (vLLM's ``--enable-prefix-caching``, on by default in V1).
    Turned off, nothing is looked up or added and unreferenced cached blocks are dropped."""

    def effective_speed(self) -> float:
        share = 1.0 - min(MAX_EXTERNAL_LOAD, max(0.0, self.external_load))
        return self.speed * share * (THROTTLED_SPEED if self.gpu_throttle else 1.0)

    def step_s(self, batch: int) -> float:
        """Duration of one decode step with ``batch`` sequences decoding."""
        grow = 1.0 + max(0.0, self.batch_slowdown) * max(0, batch - 1)
        return self.tpot_ms / 1000.0 * grow / self.effective_speed()

    def prefill_s(self, tokens: int) -> float:
        """Duration of the prefill of ``tokens`` tokens, first token included."""
        per_token = tokens / self.prefill_tps if self.prefill_tps > 0 else 0.0
        return (self.ttft_ms / 1000.0 + per_token) / self.effective_speed()


class BusyMeter:
    """Exponentially weighted share of time a condition held (time constant ``tau_s``).

    Exact for a condition that changes only at ``set`` calls: O(1) per change, no timer.
    """

    def __init__(self, tau_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._tau = tau_s
        self._clock = clock
        self._value = 0.0
        self._on = False
        self._t = clock()

    def set(self, on: bool) -> None:
        self._advance()
        self._on = on

    def value(self) -> float:
        self._advance()
        return self._value

    def _advance(self) -> None:
        now = self._clock()
        target = 1.0 if self._on else 0.0
        self._value = target + (self._value - target) * math.exp(-(now - self._t) / self._tau)
        self._t = now


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
    preemptions: int = 0
    prefilled: bool = False
    """Its prompt was prefilled once (counted in the prompt-token total)."""
    blocks: tuple[int, ...] = ()
    """Chained hashes of its prompt's full blocks (``prefix_cache.block_hashes``)."""
    cached_tokens: int = 0
    """Prompt tokens found in the prefix cache at its first admission (skipped prefill)."""
    held: int = 0
    """Leading ``blocks`` it references in the block pool while running."""
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)
    _prefill: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens it holds while running (and needs to be admitted again)."""
        return self.prompt_tokens + self.generated

    async def wait_beyond(self, seen: int) -> int:
        """Wait until more than ``seen`` tokens exist or the sequence ended; return the count."""
        while self.generated <= seen and self.finish is None:
            self._progress.clear()
            await self._progress.wait()
        return self.generated

    async def wait_done(self) -> None:
        await self._ended.wait()


# fmt: off
ITL_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)
# fmt: on
"""vLLM's bucket bounds for inter-token latency, s."""


@dataclass(slots=True)
class Totals:
    """Monotonic counters, as the server's Prometheus counters report them."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    prefix_queries: int = 0
    """Prompt tokens looked up in the prefix cache (first admissions, caching on)."""
    prefix_hits: int = 0
    """Of those, tokens found cached."""
    prompt_tokens_cached: int = 0
    """Cached prompt tokens of prefilled requests (counted with ``prompt_tokens``)."""
    finished: dict[Finish, int] = field(default_factory=lambda: dict.fromkeys(Finish, 0))
    inter_token: list[int] = field(default_factory=lambda: [0] * (len(ITL_BUCKETS) + 1))
    """Intervals between two tokens of one sequence, by ``ITL_BUCKETS`` bucket (the last
    one: above them all), as vLLM's ``inter_token_latency_seconds`` histogram counts them."""
    inter_token_s: float = 0.0
    """Their sum, s."""


class Engine:
    """Schedules sequences; call its methods from the event loop's thread only."""

    def __init__(
        self,
        knobs: Knobs,
        on_finish: Callable[[Seq], None] | None = None,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.knobs = knobs
        self.totals = Totals()
        self.cache = BlockPool(block_size)
        self._on_finish = on_finish
        self._waiting: collections.deque[Seq] = collections.deque()
        self._running: dict[Seq, None] = {}
        self._decoding: dict[Seq, None] = {}
        self._private = 0
        """KV tokens of running sequences outside the blocks they reference in the pool."""
        self._step: asyncio.TimerHandle | None = None
        self._step_s = 0.0
        self._busy = BusyMeter()

    # -- what the server reports ------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_tokens(self) -> int:
        """KV tokens running sequences hold (shared blocks once; cached free ones not)."""
        return self._private + self.cache.block_size * self.cache.in_use

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / max(1, self.knobs.kv_capacity_tokens))

    @property
    def busy_fraction(self) -> float:
        """Share of roughly the last half second with a sequence running (0..1)."""
        return self._busy.value()

    # -- requests -----------------------------------------------------------------------
    def block_hashes(self, prompt: str, salt: str = "") -> tuple[int, ...]:
        """The block hashes ``submit`` wants for ``prompt`` (a string of tokens, see
        ``prefix_cache``); none while prefix caching is off."""
        if not self.knobs.prefix_caching:
            return ()
        return block_hashes(prompt, self.cache.block_size, salt)

    def submit(self, prompt_tokens: int, max_tokens: int, blocks: tuple[int, ...] = ()) -> Seq:
        """Queue a request; raises ``Overloaded`` when the waiting queue is full.

        ``blocks``: the chained hashes of the prompt's full blocks (``block_hashes``),
        at most ``prompt_tokens // block_size`` of them; none, and nothing is cached.
        """
        loop = asyncio.get_running_loop()
        prompt_tokens = max(1, prompt_tokens)
        seq = Seq(
            prompt_tokens=prompt_tokens,
            max_tokens=max(1, max_tokens),
            arrived=loop.time(),
            blocks=blocks[: prompt_tokens // self.cache.block_size],
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
        self._evict()
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
        size = self.cache.block_size
        while self._waiting and len(self._running) < k.max_running:
            head = self._waiting[0]
            hit, revived = (0, 0)
            if k.prefix_caching:
                # At least one token is computed: the last one gives the first token.
                hit, revived = self.cache.match(head.blocks, (head.kv_tokens - 1) // size)
            # Its uncached tokens (and the cached blocks it takes back from the free pool)
            # plus the first new one must fit; cached blocks nobody uses are evicted to
            # make room. Alone, it runs anyway (a request larger than the whole cache
            # would otherwise block the queue forever).
            need = head.kv_tokens - size * (hit - revived) + 1
            if self._running and self.kv_tokens + need > k.kv_capacity_tokens:
                return
            self._waiting.popleft()
            self._start(head, hit)

    def _start(self, seq: Seq, hit: int) -> None:
        loop = asyncio.get_running_loop()
        cached = self.cache.block_size * hit
        if seq.started is None:
            seq.started = loop.time()
            seq.cached_tokens = cached
            if self.knobs.prefix_caching:
                self.totals.prefix_queries += seq.prompt_tokens
                self.totals.prefix_hits += cached
        self._running[seq] = None
        self._busy.set(True)
        self.cache.acquire(seq.blocks[:hit])
        seq.held = hit
        self._private += seq.kv_tokens - cached
        self._evict()
        seq._prefill = loop.call_later(
            self.knobs.prefill_s(seq.kv_tokens - cached), self._prefilled, seq
        )

    def _prefilled(self, seq: Seq) -> None:
        seq._prefill = None
        if not seq.prefilled:
            seq.prefilled = True
            self.totals.prompt_tokens += seq.prompt_tokens
            self.totals.prompt_tokens_cached += seq.cached_tokens
        if self.knobs.prefix_caching and seq.held < len(seq.blocks):
            # Its computed prompt blocks join the cache (or, computed meanwhile by another
            # sequence, are shared with it: the KV is then held once).
            self.cache.acquire(seq.blocks[seq.held :])
            self._private -= self.cache.block_size * (len(seq.blocks) - seq.held)
            seq.held = len(seq.blocks)
        self._decoding[seq] = None
        if not self.knobs.stall:
            self._emit(seq, asyncio.get_running_loop().time())
        self._schedule_step()

    def _schedule_step(self) -> None:
        if self._step is None and self._decoding:
            self._step_s = self.knobs.step_s(len(self._decoding))
            self._step = asyncio.get_running_loop().call_later(self._step_s, self._decode_step)

    def _decode_step(self) -> None:
        self._step = None
        if not self.knobs.stall:
            now = asyncio.get_running_loop().time()
            # A sequence whose first token came less than half a step ago waits one more.
            min_gap = self._step_s / 2.0
            due = [
                s
                for s in self._decoding
                if s.first_token_at is None or now - s.last_token_at >= min_gap
            ]
            for seq in self._make_room(due):
                self._emit(seq, now)
        self._schedule_step()

    def _make_room(self, due: list[Seq]) -> list[Seq]:
        """Preempt the newest sequences until every due one has room for one more token."""
        cap = self.knobs.kv_capacity_tokens
        while due and self.kv_tokens + len(due) > cap and len(self._running) > 1:
            victim = next(reversed(self._running))
            self._preempt(victim)
            if victim in due:
                due.remove(victim)
        self._evict(len(due))
        return due

    def _evict(self, extra: int = 0) -> None:
        """Evict unreferenced cached blocks until they fit in the KV left over (all of
        them while prefix caching is off) with ``extra`` more tokens."""
        free = self.knobs.kv_capacity_tokens - self.kv_tokens - extra
        keep = free // self.cache.block_size if self.knobs.prefix_caching else 0
        self.cache.evict(keep)

    def _release(self, seq: Seq) -> None:
        """Give back the KV of a sequence leaving the batch; its blocks stay cached."""
        del self._running[seq]
        self._decoding.pop(seq, None)
        self._private -= seq.kv_tokens - self.cache.block_size * seq.held
        self.cache.release(seq.blocks[: seq.held], keep=self.knobs.prefix_caching)
        seq.held = 0
        self._busy.set(bool(self._running))

    def _preempt(self, seq: Seq) -> None:
        self._release(seq)
        if seq._prefill is not None:
            seq._prefill.cancel()
            seq._prefill = None
        seq.preemptions += 1
        self.totals.preemptions += 1
        self._waiting.appendleft(seq)

    def _emit(self, seq: Seq, now: float) -> None:
        if seq.first_token_at is not None:
            gap = now - seq.last_token_at
            self.totals.inter_token[bisect.bisect_left(ITL_BUCKETS, gap)] += 1
            self.totals.inter_token_s += gap
        seq.generated += 1
        seq.last_token_at = now
        if seq.first_token_at is None:
            seq.first_token_at = now
        self._private += 1
        self.totals.generation_tokens += 1
        seq._progress.set()
        if seq.generated >= seq.max_tokens:
            self._end(seq, Finish.LENGTH)

    def _end(self, seq: Seq, why: Finish) -> None:
        if seq in self._running:
            self._release(seq)
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
