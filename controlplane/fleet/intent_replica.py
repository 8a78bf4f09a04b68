"""Intent replicated across regions by Redis itself: read the local copy, write the home.

Each region has an intent Redis. The home region's is the primary; the others are Redis
replicas of it (``replicaof``), so the copy a control plane follows is always a real
replica, never a hand-made sync. ``ReplicatedIntentStore`` implements ``IntentStore``:

- ``read`` and ``events`` use the local copy (PUBLISH is part of the replication
  stream, so the intent-events channel fires on replicas too);
- ``read_latest``, ``write`` and ``restore`` go to the home primary, with the same
  compare-and-set script as ``RedisIntentStore``.

When the home cannot be reached, or answers that it is a read-only replica (the home was
moved and fleet.yaml not yet changed), writes raise ``IntentUnwritable`` with a reason
that says so (the caller adds which revision it keeps applying): a region cut off from
the home never writes its own copy (no split brain) and keeps applying the last intent.
A local replica that holds no intent and is not linked to the home raises
``IntentNotSynced`` from ``read`` (a ``ConnectionError``): a watcher then keeps waiting
instead of taking "no intent" for the truth.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from controlplane.fleet.intent_store import IntentUnwritable, RedisIntentStore, StoredIntent

log = logging.getLogger(__name__)

T = TypeVar("T")

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
"""Errors that mean "the home did not answer" (refused, timed out, reset)."""


class IntentNotSynced(ConnectionError):
    """The local intent replica is empty and not linked to the home: nothing to follow."""


class ReplicatedIntentStore:
    """Implements ``IntentStore`` over a local copy and the home primary (see module doc)."""

    def __init__(
        self,
        local: aioredis.Redis,
        home_client: aioredis.Redis,
        *,
        region: str,
        home: str,
        home_url: str = "",
    ) -> None:
        self._local_client = local
        self._local = RedisIntentStore(local)
        self._home = RedisIntentStore(home_client)
        self.region = region
        self.home = home
        self._home_url = home_url

    @property
    def is_home(self) -> bool:
        return self.region == self.home

    async def read(self) -> StoredIntent:
        stored = await self._local.read()
        if stored.doc is None and not self.is_home:
            info = await self._local_client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                raise IntentNotSynced(
                    f"the intent replica of {self.region!r} holds no intent and is not "
                    f"linked to the home {self.home!r} (master_link_status "
                    f"{info.get('master_link_status')!r}): waiting for it"
                )
        return stored

    async def read_latest(self) -> StoredIntent:
        return await self._at_home(self._home.read())

    async def write(self, expected: int, doc: str) -> StoredIntent:
        return await self._at_home(self._home.write(expected, doc))

    async def restore(self, stored: StoredIntent) -> bool:
        """Put ``stored`` back at the home (replicas follow); False if it cannot."""
        try:
            return await self._home.restore(stored)
        except (RedisError, OSError) as e:
            log.warning("cannot restore intent at the home %r: %s", self.home, e)
            return False

    def events(self) -> AsyncIterator[int]:
        return self._local.events()

    async def _at_home(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ReadOnlyError as e:
            raise IntentUnwritable(
                "intent_home_read_only",
                f"intent home region {self.home!r}{self._where()} is a read-only replica now "
                f"({e}; was the home moved?): set intent.home in fleet.yaml to the new home "
                "and restart aixds serve; writes are refused until then to avoid split brain",
            ) from None
        except UNREACHABLE as e:
            raise IntentUnwritable(
                "intent_home_unreachable",
                f"intent home region {self.home!r} is unreachable from {self.region!r} "
                f"({type(e).__name__}: {e or 'no answer'}): writes are refused to avoid "
                "split brain",
            ) from None

    def _where(self) -> str:
        return f" ({self._home_url})" if self._home_url else ""
