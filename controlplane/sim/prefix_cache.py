"""The fake server's automatic prefix caching: prompt blocks hashed as a chain, LRU reuse.

Like vLLM's (``--enable-prefix-caching``, on by default in V1), in small:

- **Tokens.** A prompt reaches the engine as a string of ``CHARS_PER_TOKEN``-character
  tokens (``openai_format`` pads each piece of text to whole tokens, so the count is the
  one the fake always used: about four characters per token).
- **Blocks.** Each full block of ``block_size`` tokens (vLLM's default 16) has a hash that
  covers its tokens *and its parent's hash*, so two prompts share a block only when
  everything before it is the same too. The chain starts from a salt (a LoRA adapter's
  name: adapters never share KV with the base model). A partial last block is not cached.
- **Pool.** ``BlockPool`` holds the cached blocks with a reference count: a running
  sequence holds its prompt's blocks; when it ends (or is preempted) they stay cached with
  no reference, in least-recently-used order, tail blocks first so a shared head outlives
  its private tail. Unreferenced blocks share the KV capacity with running sequences and
  are evicted, oldest first, when those need the room; a referenced block is never
  evicted. The engine (``engine``) does the accounting; every operation here is O(blocks).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
"""Width of one token in the prompt string the engine hashes."""
BLOCK_SIZE = 16
"""vLLM's default KV block size on GPUs, in tokens (``--block-size``)."""


def block_hashes(prompt: str, block_size: int = BLOCK_SIZE, salt: str = "") -> tuple[int, ...]:
    """The chained hashes of the full blocks of ``prompt`` (a string of tokens).

    Python's ``hash`` is stable within one process, which is all one server's cache needs.
    """
    step = CHARS_PER_TOKEN * block_size
    h = hash(salt)
    out = []
    for start in range(0, len(prompt) - step + 1, step):
        h = hash((h, prompt[start : start + step]))
        out.append(h)
    return tuple(out)


class BlockPool:
    """Cached KV blocks by hash: reference counts and the LRU order of unreferenced ones."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._refs: dict[int, int] = {}
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict()
        """Blocks nobody references, least recently used first (the eviction order)."""
        self.in_use = 0
        """Blocks referenced by at least one running sequence."""
        self.evictions = 0

    @property
    def cached(self) -> int:
        """Unreferenced blocks kept for reuse (they count as free KV, as in vLLM)."""
        return len(self._free)

    def match(self, hashes: Sequence[int], limit: int) -> tuple[int, int]:
        """How many leading blocks (at most ``limit``) are cached, and how many of those
        are unreferenced now (reusing them takes them out of the free pool)."""
        hit = revived = 0
        for h in itertools.islice(hashes, max(0, limit)):
            refs = self._refs.get(h)
            if refs is None:
                break
            hit += 1
            revived += refs == 0
        return hit, revived

    def acquire(self, hashes: Sequence[int]) -> None:
        """Reference these blocks, caching the ones not cached yet."""
        for h in hashes:
            refs = self._refs.get(h, -1)
            if refs <= 0:
                self.in_use += 1
                if refs == 0:
                    del self._free[h]
                refs = 0
            self._refs[h] = refs + 1

    def release(self, hashes: Sequence[int], keep: bool = True) -> None:
        """Drop one reference from each block; a block nobody references stays cached (the
        last block first, so it is evicted first) or, with ``keep`` false, is forgotten."""
        for h in reversed(hashes):
            refs = self._refs[h] - 1
            if refs:
                self._refs[h] = refs
                continue
            self.in_use -= 1
            if keep:
                self._refs[h] = 0
                self._free[h] = None
            else:
                del self._refs[h]

    def evict(self, keep: int) -> None:
        """Forget least recently used unreferenced blocks until at most ``keep`` remain."""
        while len(self._free) > max(0, keep):
            h, _ = self._free.popitem(last=False)
            del self._refs[h]
            self.evictions += 1
