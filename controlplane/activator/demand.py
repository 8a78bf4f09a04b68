"""What the activator tells the placement: requests held now and requests that arrived, per
model, shared through Redis so the one acting control plane sees every activator's.

- ``aixds:v1:waiting:<instance>``: hash model -> requests held now (expires unless renewed:
  a dead activator's count vanishes);
- ``aixds:v1:held-since:<instance>``: hash model -> when the oldest of them was first held
  (epoch seconds, same expiry): placement lets a request held long outrank models that
  serve requests now, so none reaches the hold bound for want of GPU memory;
- ``aixds:v1:arrivals:<epoch-second>``: hash model -> requests that reached an activator
  in that second (HINCRBY, expiring): demand for models that have no cluster yet, which
  load reports (LRS) cannot show.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from controlplane.fleet import schema

log = logging.getLogger(__name__)

WAITING_TTL_MS = 3000
ARRIVALS_TTL_S = 600


class ActivatorDemand:
    """Counts held and arrived requests; ``run()`` flushes them to Redis periodically."""

    def __init__(
        self,
        client: aioredis.Redis,
        instance: str,
        *,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._key = schema.waiting_key(instance)
        self._since_key = schema.held_since_key(instance)
        self._interval_s = interval_s
        self._clock = clock
        self._held: dict[str, Counter[float]] = {}
        """Per model, the hold start times of the requests held now (a multiset): their
        count is what waits, the earliest how long."""
        self._arrived: Counter[tuple[int, str]] = Counter()
        self._had_waiting = False
        self._failing = False

    def arrived(self, model: str) -> None:
        self._arrived[(math.floor(self._clock()), model)] += 1

    def hold(self, model: str) -> float:
        """Count a request held for ``model``; the token ``release`` takes back."""
        since = self._clock()
        self._held.setdefault(model, Counter())[since] += 1
        return since

    def release(self, model: str, since: float) -> None:
        held = self._held.get(model)
        if held is None:
            return
        held[since] -= 1
        if held[since] <= 0:
            del held[since]
        if not held:
            del self._held[model]

    @property
    def waiting(self) -> dict[str, int]:
        """Per model, requests held now."""
        return {m: held.total() for m, held in self._held.items()}

    def oldest(self) -> dict[str, float]:
        """Per model held now, when its oldest held request was first held."""
        return {m: min(held) for m, held in self._held.items()}

    async def flush(self) -> None:
        arrived, self._arrived = self._arrived, Counter()
        try:
            async with self._r.pipeline(transaction=False) as p:
                for (second, model), n in arrived.items():
                    key = schema.arrivals_key(second)
                    p.hincrby(key, model, n)
                    p.expire(key, ARRIVALS_TTL_S)
                p.delete(self._key, self._since_key)
                if self._held:
                    p.hset(self._key, mapping={m: n for m, n in self.waiting.items()})
                    p.pexpire(self._key, WAITING_TTL_MS)
                    p.hset(self._since_key, mapping={m: repr(t) for m, t in self.oldest().items()})
                    p.pexpire(self._since_key, WAITING_TTL_MS)
                await p.execute()
            self._failing = False
        except (RedisError, OSError) as e:
            self._arrived.update(arrived)  # kept for the next flush (bounded by seconds x models)
            if len(self._arrived) > 100_000:
                self._arrived.clear()
            if not self._failing:
                log.warning("activator demand not published, Redis unreachable: %s", e)
                self._failing = True

    async def run(self) -> None:
        while True:
            await self.flush()
            await asyncio.sleep(self._interval_s)


async def _activator_fields(
    client: aioredis.Redis, prefix: str
) -> AsyncIterator[tuple[str, bytes | str]]:
    """(model, value) of every field of every live activator's hash under ``prefix``."""
    async for key in client.scan_iter(match=prefix + "*", count=100):
        for m, v in (await client.hgetall(key)).items():
            yield _text(m), v


async def read_waiting(client: aioredis.Redis) -> dict[str, int]:
    """Requests held now by every live activator, per model."""
    total: Counter[str] = Counter()
    async for m, n in _activator_fields(client, schema.WAITING_PREFIX):
        total[m] += _int(n)
    return dict(total)


async def read_held_since(client: aioredis.Redis) -> dict[str, float]:
    """When the oldest request held now for each model was first held (epoch seconds, the
    earliest over every live activator)."""
    oldest: dict[str, float] = {}
    async for m, v in _activator_fields(client, schema.HELD_SINCE_PREFIX):
        t = _float(v)
        if t is not None:
            oldest[m] = min(t, oldest.get(m, t))
    return oldest


async def read_arrivals(client: aioredis.Redis, seconds: range) -> dict[str, int]:
    """Requests that reached any activator in these epoch seconds, per model."""
    total: Counter[str] = Counter()
    async with client.pipeline(transaction=False) as p:
        for s in seconds:
            p.hgetall(schema.arrivals_key(s))
        for doc in await p.execute():
            for m, n in doc.items():
                total[_text(m)] += _int(n)
    return dict(total)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _float(v: bytes | str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _int(v: bytes | str) -> int:
    try:
        return max(0, int(v))
    except ValueError:
        return 0
