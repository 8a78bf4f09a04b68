"""The registry's Protocols: what agents write and what the control plane reads.

``RedisRegistry`` (``registry``) is the real implementation; ``MemoryRegistry`` (here) is an
in-memory one with the same behaviour for unit tests of code that only needs the Protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from controlplane.fleet.codec import RecordError, decode_record, encode_record
from controlplane.fleet.model import ReplicaRecord


@dataclass(frozen=True, slots=True)
class RawEntry:
    """A stored record as read: its raw text and its remaining TTL in seconds."""

    replica_id: str
    raw: str | bytes | None
    """The stored text (bytes from Redis: the codec checks that they are UTF-8); ``None``
    when the key is gone."""
    ttl_s: float
    problem: str = ""
    """Why the stored value cannot be read at all (a key of the wrong Redis type, a key
    name that is not UTF-8): the entry is then malformed whatever ``raw`` holds."""


class RegistryWriter(Protocol):
    """What an agent needs: write its replicas' records with a TTL and announce them."""

    async def publish(self, rec: ReplicaRecord, ttl_s: float) -> None: ...

    async def remove(self, replica_id: str) -> None: ...


class RegistryReader(Protocol):
    """What the control plane needs: read all or one record, and hear about changes."""

    async def read_all(self) -> list[RawEntry]: ...

    async def read(self, replica_ids: list[str]) -> list[RawEntry]: ...

    def events(self) -> AsyncIterator[str]:
        """Replica ids as they are announced; ends (raises) when the connection drops."""
        ...


def decode_entry(entry: RawEntry) -> ReplicaRecord:
    """Decode and check that the record names the key it was stored under."""
    if entry.problem:
        raise RecordError(entry.problem)
    if entry.raw is None:
        raise RecordError("record field missing")
    rec = decode_record(entry.raw)
    if rec.replica_id != entry.replica_id:
        raise RecordError(f"replica_id {rec.replica_id!r} stored under {entry.replica_id!r}")
    return rec


class MemoryRegistry:
    """In-memory registry with TTLs on an injected clock; implements both Protocols."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._data: dict[str, tuple[str, float]] = {}
        self._queues: list[asyncio.Queue[str | None]] = []

    def put_raw(self, replica_id: str, raw: str, ttl_s: float) -> None:
        self._data[replica_id] = (raw, self._clock() + ttl_s)
        for q in self._queues:
            q.put_nowait(replica_id)

    async def publish(self, rec: ReplicaRecord, ttl_s: float) -> None:
        self.put_raw(rec.replica_id, encode_record(rec), ttl_s)

    async def remove(self, replica_id: str) -> None:
        self._data.pop(replica_id, None)
        for q in self._queues:
            q.put_nowait(replica_id)

    def _entry(self, rid: str) -> RawEntry:
        now = self._clock()
        item = self._data.get(rid)
        if item is None or item[1] <= now:
            return RawEntry(rid, None, 0.0)
        return RawEntry(rid, item[0], item[1] - now)

    async def read_all(self) -> list[RawEntry]:
        return [e for e in map(self._entry, sorted(self._data)) if e.raw is not None]

    async def read(self, replica_ids: list[str]) -> list[RawEntry]:
        return [self._entry(r) for r in replica_ids]

    def drop_events(self) -> None:
        """What a lost pub/sub connection does: every ``events()`` stream raises."""
        for q in self._queues:
            q.put_nowait(None)

    async def events(self) -> AsyncIterator[str]:
        q: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues.append(q)
        try:
            while True:
                rid = await q.get()
                if rid is None:
                    raise ConnectionError("event stream dropped")
                yield rid
        finally:
            self._queues.remove(q)


class Clock(Protocol):
    def __call__(self) -> float: ...
