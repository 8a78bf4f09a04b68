"""The Redis implementation of the registry Protocols (schema v1, see ``schema``).

A record is a hash field written with HSET + PEXPIRE in one MULTI, then its replica id is
PUBLISHed on the events channel. Reads use SCAN + a pipeline of HGET/PTTL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from controlplane.fleet import schema
from controlplane.fleet.codec import encode_record
from controlplane.fleet.model import ReplicaRecord
from controlplane.fleet.redis_url import connect
from controlplane.fleet.store import RawEntry

__all__ = ["RedisRegistry", "connect"]  # connect lives in redis_url; also importable here


class RedisRegistry:
    """Replica records in Redis. Implements ``RegistryWriter`` and ``RegistryReader``."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client

    @property
    def client(self) -> aioredis.Redis:
        return self._r

    async def publish(self, rec: ReplicaRecord, ttl_s: float) -> None:
        key = schema.replica_key(rec.replica_id)
        async with self._r.pipeline(transaction=True) as p:
            p.hset(key, schema.RECORD_FIELD, encode_record(rec))
            p.pexpire(key, max(1, int(ttl_s * 1000)))
            p.publish(schema.EVENTS_CHANNEL, rec.replica_id)
            await p.execute()

    async def remove(self, replica_id: str) -> None:
        async with self._r.pipeline(transaction=True) as p:
            p.delete(schema.replica_key(replica_id))
            p.publish(schema.EVENTS_CHANNEL, replica_id)
            await p.execute()

    async def read_all(self) -> list[RawEntry]:
        ids = [
            schema.replica_id_from_key(k)
            async for k in self._r.scan_iter(match=schema.REPLICA_PREFIX + "*", count=1000)
        ]
        entries = await self.read(ids)
        return [e for e in entries if e.raw is not None]

    async def read(self, replica_ids: list[str]) -> list[RawEntry]:
        if not replica_ids:
            return []
        async with self._r.pipeline(transaction=False) as p:
            for rid in replica_ids:
                key = schema.replica_key(rid)
                p.hget(key, schema.RECORD_FIELD)
                p.pttl(key)
            res = await p.execute()
        out: list[RawEntry] = []
        for i, rid in enumerate(replica_ids):
            raw, pttl = res[2 * i], res[2 * i + 1]
            if raw is None or not isinstance(pttl, int) or pttl == -2:
                out.append(RawEntry(rid, None, 0.0))
            else:
                # -1 = no TTL (written by hand): treat as fresh for one resync period.
                out.append(RawEntry(rid, raw, pttl / 1000.0 if pttl >= 0 else 3600.0))
        return out

    async def events(self) -> AsyncIterator[str]:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(schema.EVENTS_CHANNEL)
            while True:
                # A dropped connection raises here. (No PING on the pub/sub connection:
                # redis-py then ignores cancellation.) A half-open connection is caught
                # by the watcher's periodic resync on the command connection.
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                data = msg.get("data")
                if isinstance(data, str):
                    yield data
        finally:
            await pubsub.aclose()
