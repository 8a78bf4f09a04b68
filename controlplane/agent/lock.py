"""One agent per node: a Redis lock with a TTL, ``aixds:v1:agent-lock:<node>``.

The value is this agent's token (``host:pid:random``). ``acquire`` is ``SET NX PX``;
``keep`` refreshes the TTL every third of it with a check-and-expire script, and
``release`` deletes the key only if it still holds our token (check-and-delete script),
so an agent never extends or removes another agent's lock. ``--takeover`` overwrites the
holder; that agent then finds its token gone at its next refresh and stops.

While Redis is unreachable the agent keeps running (it cannot publish anyway). If the key
vanished meanwhile (a Redis restart without persistence) it is taken again with NX; if
another agent holds it, this one has lost and must stop without touching the records.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import redis.asyncio as aioredis

from controlplane.agent.aio import raise_if_cancelled
from controlplane.fleet import schema
from controlplane.fleet.leader import RELEASE_IF_OWNER

log = logging.getLogger(__name__)

LOCK_PREFIX = schema.PREFIX + "agent-lock:"
"""Lock key prefix; the node name follows."""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def lock_key(node: str) -> str:
    return LOCK_PREFIX + node


class LockHeld(Exception):
    """Another agent holds the node's lock."""

    def __init__(self, key: str, holder: str, ttl_ms: int) -> None:
        super().__init__(
            f"another agent ({holder or 'unknown'}) holds {key} "
            f"(expires in {max(0, ttl_ms) / 1000:.1f} s unless refreshed)"
        )
        self.holder = holder


class NodeLock:
    """The lock of one node, held by this process."""

    def __init__(self, client: aioredis.Redis, node: str, ttl_s: float = 15.0) -> None:
        self._r = client
        self.key = lock_key(node)
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(RELEASE_IF_OWNER)

    async def acquire(self, takeover: bool = False) -> None:
        """Take the lock; ``LockHeld`` if another agent has it (and not ``takeover``)."""
        if await self._r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return
        holder = await self._r.get(self.key)
        if takeover:
            await self._r.set(self.key, self.token, px=self.ttl_ms)
            log.warning("took over %s from %s (--takeover)", self.key, holder)
            return
        ttl = await self._r.pttl(self.key)
        raise LockHeld(self.key, str(holder or ""), int(ttl))

    async def refresh(self) -> bool:
        """Extend the TTL if we still hold it; else try to take it back if it is free.

        ``False`` when another agent holds it now. Raises if Redis is unreachable.
        """
        if await self._refresh(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        if await self._r.set(self.key, self.token, nx=True, px=self.ttl_ms):
            log.info("%s was gone (Redis restarted?); taken again", self.key)
            return True
        return False

    async def keep(self, lost: asyncio.Event) -> None:
        """Refresh every third of the TTL until cancelled; set ``lost`` and end if taken."""
        down = False
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                held = await self.refresh()
            except Exception as e:  # Redis unreachable: keep going, retry next period
                raise_if_cancelled()
                if not down:
                    log.warning("cannot refresh %s (%s); retrying", self.key, e)
                down = True
                continue
            raise_if_cancelled()
            down = False
            if not held:
                log.error("lost %s to another agent: stopping", self.key)
                lost.set()
                return

    async def release(self) -> bool:
        """Delete the key if it is still ours; never raises (it expires anyway)."""
        try:
            return bool(await self._release(keys=[self.key], args=[self.token]))
        except Exception as e:
            log.warning("could not release %s (%s); it expires by TTL", self.key, e)
            return False
