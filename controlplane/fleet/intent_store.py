"""Where intent lives: one Redis hash with a revision number, written by compare-and-set.

``write(expected, doc)`` succeeds only if the stored revision is still ``expected``; it
then stores ``expected + 1`` and PUBLISHes it on the intent-events channel, all in one Lua
script (atomic). A writer that lost the race gets ``RevisionConflict`` (the API answers
409) instead of overwriting the other's change.

``epoch`` names one history of revisions: it is chosen by the first write to an empty
key. Watchers adopt a revision only if it is newer in the same epoch (a slow read can
never roll them back) or if the epoch changed (the key was deleted and written anew).
``restore`` puts an intent back with its revision and epoch only if the key is missing
(a Redis restarted without persistence), so intent survives while any replica runs.

``read`` is the copy a watcher follows; ``read_latest`` is the copy a writer must
compare against (the same hash here; the writable primary for ``ReplicatedIntentStore`` in
``fleet.intent_replica``, whose local copy may lag).

``MemoryIntentStore`` has the same behaviour for tests.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from controlplane.fleet import schema


@dataclass(frozen=True, slots=True)
class StoredIntent:
    """The intent document as stored: ``doc`` is None when there is none yet."""

    revision: int
    epoch: str
    doc: str | None


class RevisionConflict(Exception):
    """The stored revision is not the expected one: someone else wrote first."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"intent revision is {current}, not {expected}")
        self.expected = expected
        self.current = current


class IntentUnwritable(Exception):
    """Intent cannot be written from here now (its home is unreachable or not writable).

    Not a ``RedisError``: callers must not take it for a passing Redis hiccup of their
    own region. ``code`` is stable (``intent_home_unreachable``, ``intent_home_read_only``).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class IntentStore(Protocol):
    async def read(self) -> StoredIntent:
        """The copy this control plane follows (may lag the writable one)."""
        ...

    async def read_latest(self) -> StoredIntent:
        """The writable copy, to compare-and-set against; ``IntentUnwritable`` if unreachable."""
        ...

    async def write(self, expected: int, doc: str) -> StoredIntent:
        """Store ``doc`` as revision ``expected + 1``; ``RevisionConflict`` otherwise."""
        ...

    async def restore(self, stored: StoredIntent) -> bool:
        """Put ``stored`` back as it was if the key is missing; True if it was."""
        ...

    def events(self) -> AsyncIterator[int]:
        """``SUBSCRIBED`` once subscribed, then revisions as they are written; ends (raises)
        when the connection drops. A reader that reads the intent after ``SUBSCRIBED``
        misses no write."""
        ...


SUBSCRIBED = -1
"""What ``IntentStore.events`` yields first, once a write would be announced (published
revisions are never negative)."""


def new_epoch() -> str:
    return secrets.token_hex(8)


_CAS = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'revision') or '0')
if cur ~= tonumber(ARGV[1]) then
  return {0, cur, ''}
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
end
local new = cur + 1
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'revision', new, 'epoch', epoch)
redis.call('PUBLISH', KEYS[2], new)
return {1, new, epoch}
"""

_RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'revision', ARGV[2], 'epoch', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


class RedisIntentStore:
    """Intent in ``aixds:v1:intent``; implements ``IntentStore``."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._cas: Any = client.register_script(_CAS)
        self._restore: Any = client.register_script(_RESTORE)
        self._keys = [schema.INTENT_KEY, schema.INTENT_EVENTS_CHANNEL]

    async def read(self) -> StoredIntent:
        doc, rev, epoch = await self._r.hmget(schema.INTENT_KEY, ["doc", "revision", "epoch"])
        if doc is None:
            return StoredIntent(0, "", None)
        return StoredIntent(int(rev or 0), str(epoch or ""), str(doc))

    async def read_latest(self) -> StoredIntent:
        return await self.read()

    async def write(self, expected: int, doc: str) -> StoredIntent:
        ok, rev, epoch = await self._cas(keys=self._keys, args=[expected, doc, new_epoch()])
        if not int(ok):
            raise RevisionConflict(expected, int(rev))
        return StoredIntent(int(rev), str(epoch), doc)

    async def restore(self, stored: StoredIntent) -> bool:
        if stored.doc is None:
            return False
        args = [stored.doc, stored.revision, stored.epoch]
        return bool(int(await self._restore(keys=self._keys, args=args)))

    async def events(self) -> AsyncIterator[int]:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(schema.INTENT_EVENTS_CHANNEL)
            yield SUBSCRIBED  # a write from now on is announced
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None:
                    continue
                data = msg.get("data")
                if isinstance(data, str) and data.isdigit():
                    yield int(data)
        finally:
            await pubsub.aclose()


class MemoryIntentStore:
    """In-memory ``IntentStore`` for tests; ``fail`` makes every call raise it."""

    def __init__(self) -> None:
        self.stored = StoredIntent(0, "", None)
        self.fail: Exception | None = None
        self._queues: list[asyncio.Queue[int]] = []

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def _announce(self) -> None:
        for q in self._queues:
            q.put_nowait(self.stored.revision)

    async def read(self) -> StoredIntent:
        self._check()
        return self.stored

    async def read_latest(self) -> StoredIntent:
        return await self.read()

    async def write(self, expected: int, doc: str) -> StoredIntent:
        self._check()
        if self.stored.revision != expected:
            raise RevisionConflict(expected, self.stored.revision)
        self.stored = StoredIntent(expected + 1, self.stored.epoch or new_epoch(), doc)
        self._announce()
        return self.stored

    async def restore(self, stored: StoredIntent) -> bool:
        self._check()
        if self.stored.doc is not None or stored.doc is None:
            return False
        self.stored = stored
        self._announce()
        return True

    def delete(self) -> None:
        """What a Redis restart without persistence does."""
        self.stored = StoredIntent(0, "", None)

    async def events(self) -> AsyncIterator[int]:
        q: asyncio.Queue[int] = asyncio.Queue()
        self._queues.append(q)
        try:
            self._check()
            yield SUBSCRIBED
            while True:
                self._check()
                yield await q.get()
        finally:
            self._queues.remove(q)
