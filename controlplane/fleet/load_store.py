"""Per-second request outcomes per cluster, shared by every control-plane replica.

Each replica receives load reports (LRS) from the Envoys connected to it and adds the
successful and failed request counts to one hash per wall-clock second
(``aixds:v1:load:<second>``, fields ``s:<cluster>`` and ``e:<cluster>``, HINCRBY, expiring).
The replica that acts for automatic rollback reads the seconds of its window back and
so sees the load of every Envoy, whichever replica it reports to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis

from controlplane.decide.rollback import LoadBucket
from controlplane.fleet import schema

BUCKET_TTL_S = 600
"""Buckets older than this are gone; windows are far shorter."""

Deltas = Mapping[tuple[int, str], tuple[int, int]]
"""(second, cluster) -> (successful, failed) requests to add."""


class LoadStore(Protocol):
    async def add(self, deltas: Deltas) -> None: ...

    async def read(self, since: float, until: float) -> list[LoadBucket]:
        """Buckets whose second lies in [floor(since), until]."""
        ...


def _seconds(since: float, until: float) -> range:
    return range(math.floor(since), math.floor(until) + 1)


class RedisLoadStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client

    async def add(self, deltas: Deltas) -> None:
        if not deltas:
            return
        async with self._r.pipeline(transaction=False) as p:
            seconds = set()
            for (sec, cluster), (ok, err) in deltas.items():
                key = schema.LOAD_PREFIX + str(sec)
                seconds.add(key)
                if ok:
                    p.hincrby(key, "s:" + cluster, ok)
                if err:
                    p.hincrby(key, "e:" + cluster, err)
            for key in seconds:
                p.expire(key, BUCKET_TTL_S)
            await p.execute()

    async def read(self, since: float, until: float) -> list[LoadBucket]:
        secs = _seconds(since, until)
        if len(secs) > BUCKET_TTL_S:
            secs = secs[-BUCKET_TTL_S:]
        async with self._r.pipeline(transaction=False) as p:
            for sec in secs:
                p.hgetall(schema.LOAD_PREFIX + str(sec))
            res = await p.execute()
        out: list[LoadBucket] = []
        for sec, fields in zip(secs, res, strict=True):
            counts: dict[str, list[int]] = {}
            for f, v in (fields or {}).items():
                kind, _, cluster = str(f).partition(":")
                if kind not in ("s", "e") or not cluster:
                    continue
                try:
                    n = int(v)
                except (TypeError, ValueError):
                    continue
                counts.setdefault(cluster, [0, 0])[0 if kind == "s" else 1] += n
            out.extend(LoadBucket(float(sec), c, s, e) for c, (s, e) in sorted(counts.items()))
        return out


class MemoryLoadStore:
    """``LoadStore`` in a dict (tests)."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, str], tuple[int, int]] = {}

    async def add(self, deltas: Deltas) -> None:
        for k, (ok, err) in deltas.items():
            s, e = self.data.get(k, (0, 0))
            self.data[k] = (s + ok, e + err)

    async def read(self, since: float, until: float) -> list[LoadBucket]:
        secs = _seconds(since, until)
        return [
            LoadBucket(float(sec), c, s, e)
            for (sec, c), (s, e) in sorted(self.data.items())
            if sec in secs
        ]
