"""``PrefixHitRate``: a model server's recent prefix-cache hit rate, from its own counters.

Servers with automatic prefix caching count prompt tokens looked up in the cache and
those found (vLLM ``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total``,
SGLang ``sglang:prompt_tokens_total`` / ``sglang:cached_tokens_total``). Their totals since
start say little about now, so the agent publishes the share over the last ``window_s``:
(hits now - hits then) / (queries now - queries then), token-weighted. While no prompt
arrives the last rate stays; a counter that goes back (a restart) starts a new window.
Before the first lookup the rate is unknown (``None``), and the record leaves it out.

A server that has no counters but a hit-rate gauge of its own (vLLM V0's
``vllm:gpu_prefix_cache_hit_rate``, SGLang's ``sglang:cache_hit_rate``) is published
with that value (``observe``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

DIGITS = 3
"""The published rate is rounded to this many decimals (0.1 %): finer is noise."""


@dataclass
class PrefixHitRate:
    """The recent prefix-cache hit rate of one server; feed it every scrape."""

    window_s: float = 10.0
    """The rate covers at least this many seconds of scrapes (once that much history exists)."""
    rate: float | None = None
    """The published rate, 0..1; ``None`` until the server has looked anything up."""
    _samples: collections.deque[tuple[float, float, float]] = field(
        default_factory=collections.deque, repr=False
    )

    def update(self, now: float, hits: float, queries: float) -> float | None:
        """One scrape at monotonic time ``now``: the hit and query counters (tokens)."""
        s = self._samples
        if s and (hits < s[-1][1] or queries < s[-1][2] or now <= s[-1][0]):
            s.clear()  # a restart (or a clock that did not move): start over
        s.append((now, hits, queries))
        # Keep the newest sample at or before the window's start: the rate spans the window.
        while len(s) > 2 and s[1][0] <= now - self.window_s:
            s.popleft()
        _, h0, q0 = s[0]
        if queries > q0:
            self.rate = round(min(1.0, max(0.0, (hits - h0) / (queries - q0))), DIGITS)
        return self.rate

    def observe(self, rate: float) -> float | None:
        """A hit rate the server computed itself (0..1)."""
        self._samples.clear()
        self.rate = round(min(1.0, max(0.0, rate)), DIGITS)
        return self.rate
