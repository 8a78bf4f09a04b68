"""The Redis implementation of the registry Protocols (schema v1, see ``schema``).

A record is a hash field written with HSET + PEXPIRE in one MULTI, then its replica id is
PUBLISHed on the events channel. Reads use SCAN + a pipeline of HGET/PTTL.

Anyone with access to Redis can write anything under our keys, so reads never trust the
bytes: key names, records and event messages are read undecoded, and a key that is not
UTF-8, a record that is not UTF-8 (left to the codec) or a key of the wrong Redis type
becomes one malformed entry, never an error that fails the whole read (which the watcher
would take for a lost connection, freezing the fleet view).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

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
        ids: list[str] = []
        bad: list[RawEntry] = []
        cursor: int = 0
        while True:
            cursor, keys = await self._r.execute_command(  # type: ignore[no-untyped-call]
                "SCAN", cursor, "MATCH", schema.REPLICA_PREFIX + "*", "COUNT", 1000,
                **{NEVER_DECODE: True},
            )  # fmt: skip
            k: bytes
            for k in keys:
                try:
                    ids.append(schema.replica_id_from_key(k.decode("utf-8")))
                except UnicodeDecodeError:
                    name = k.decode("utf-8", "backslashreplace")
                    bad.append(RawEntry(name, b"", 0.0, problem="key name is not UTF-8"))
            if cursor == 0:
                break
        entries = await self.read(ids)
        return [e for e in entries if e.raw is not None] + bad

    async def read(self, replica_ids: list[str]) -> list[RawEntry]:
        if not replica_ids:
            return []
        async with self._r.pipeline(transaction=False) as p:
            for rid in replica_ids:
                key = schema.replica_key(rid)
                p.execute_command("HGET", key, schema.RECORD_FIELD, **{NEVER_DECODE: True})
                p.pttl(key)
            res = await p.execute(raise_on_error=False)
        out: list[RawEntry] = []
        for i, rid in enumerate(replica_ids):
            raw, pttl = res[2 * i], res[2 * i + 1]
            if not isinstance(pttl, int) or pttl == -2:
                out.append(RawEntry(rid, None, 0.0))
                continue
            # -1 = no TTL (written by hand): treat as fresh for one resync period.
            ttl_s = pttl / 1000.0 if pttl >= 0 else 3600.0
            if isinstance(raw, ResponseError):  # e.g. WRONGTYPE: a string where a hash goes
                out.append(RawEntry(rid, b"", ttl_s, problem=f"unreadable key: {raw}"))
            elif isinstance(raw, bytes):
                out.append(RawEntry(rid, raw, ttl_s))
            else:
                out.append(RawEntry(rid, None, 0.0))
        return out

    async def events(self) -> AsyncIterator[str]:
        # Its own connection, undecoded: a message that is not UTF-8 is skipped here
        # instead of failing the read (which would end the stream like a lost connection).
        raw_pool = undecoded_twin(self._r.connection_pool)
        pubsub = PubSub(raw_pool, ignore_subscribe_messages=True)
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
                if isinstance(data, bytes):
                    try:
                        yield data.decode("utf-8")
                    except UnicodeDecodeError:
                        continue  # no replica has that id; the resync reads every key
        finally:
            try:
                await pubsub.aclose()
            finally:
                await raw_pool.aclose()


def undecoded_twin(pool: ConnectionPool) -> ConnectionPool:
    """A pool to the same Redis as ``pool`` whose replies stay bytes. A Sentinel pool
    stays one (it finds the primary through the same Sentinels); its own back-reference
    in the connection arguments is not copied."""
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs["decode_responses"] = False
    if isinstance(pool, SentinelConnectionPool):
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]  # redis-py: untyped
            pool.service_name,
            pool.sentinel_manager,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            connection_class=pool.connection_class,
            **kwargs,
        )
    return type(pool)(connection_class=pool.connection_class, **kwargs)
