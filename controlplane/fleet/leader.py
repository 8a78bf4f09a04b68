"""A Redis lock with a TTL: which control-plane replica acts (automatic rollback).

All replicas serve; one acts. ``hold()`` takes the lock if it is free, or renews it if we
hold it, and says whether we hold it now. If the holder dies, the lock expires after
``ttl_s`` and another replica takes it on its next ``hold()``. Compare-and-set in Lua, so a
replica never renews or releases a lock another one took after its own expired.
"""

from __future__ import annotations

from typing import Any, Protocol

import redis.asyncio as aioredis

_HOLD = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete ``KEYS[1]`` only if it still holds ``ARGV[1]`` (our token); also ``agent.lock``."""


class Lock(Protocol):
    owner: str

    async def hold(self) -> bool: ...

    async def release(self) -> None: ...

    async def holder(self) -> str | None: ...


class RedisLock:
    """Implements ``Lock`` on one Redis key."""

    def __init__(self, client: aioredis.Redis, key: str, owner: str, ttl_s: float) -> None:
        self._r = client
        self.key = key
        self.owner = owner
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._hold: Any = client.register_script(_HOLD)
        self._release: Any = client.register_script(RELEASE_IF_OWNER)

    async def hold(self) -> bool:
        return bool(int(await self._hold(keys=[self.key], args=[self.owner, self._ttl_ms])))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.owner])

    async def holder(self) -> str | None:
        v = await self._r.get(self.key)
        return None if v is None else str(v)


class MemoryLock:
    """A ``Lock`` that is held by whoever set ``holder_id`` (tests)."""

    def __init__(self, owner: str, *, free: bool = True) -> None:
        self.owner = owner
        self.holder_id: str | None = None if free else "someone-else"

    async def hold(self) -> bool:
        if self.holder_id is None:
            self.holder_id = self.owner
        return self.holder_id == self.owner

    async def release(self) -> None:
        if self.holder_id == self.owner:
            self.holder_id = None

    async def holder(self) -> str | None:
        return self.holder_id
