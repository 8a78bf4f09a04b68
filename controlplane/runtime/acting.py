"""Which control-plane replica acts for a job that only one may do (all of them watch).

``Acting`` wraps a ``fleet.leader.Lock`` the way the acting loops (automatic rollback,
serving-version recording) use it: ``hold()`` takes or renews the lock and says whether
this replica acts; a 0/1 gauge and a log line follow every change. ``tick()`` runs one
round of the loop with Redis failures logged once and counted as losing the lock, so the
loop goes on; ``release()`` gives the lock up on the way out, bounded, even when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge
from redis.exceptions import RedisError

from controlplane.fleet.leader import Lock

log = logging.getLogger(__name__)


class Acting:
    def __init__(self, lock: Lock, gauge: Gauge, job: str) -> None:
        self._lock = lock
        self._gauge = gauge
        self.job = job
        """What the lock holder does, for log lines (e.g. ``automatic rollback``)."""
        self.leader = False
        """This replica held the lock at its last ``hold()``."""
        self._failing = False

    @property
    def owner(self) -> str:
        return self._lock.owner

    async def holder(self) -> str | None:
        return await self._lock.holder()

    async def hold(self) -> bool:
        self._set(await self._lock.hold())
        return self.leader

    async def tick(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body()``; Redis unreachable is logged (once per outage), not raised."""
        try:
            await body()
            self._failing = False
        except (RedisError, OSError) as e:
            self._set(False)
            if not self._failing:
                log.warning("%s paused, Redis unreachable: %s", self.job, e)
                self._failing = True

    async def release(self) -> None:
        if self.leader:
            self._set(False)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._lock.release(), 1.0)

    def _set(self, held: bool) -> None:
        if held != self.leader:
            log.info(
                "%s the %s lock (%s)",
                "holding" if held else "no longer holding",
                self.job,
                self._lock.owner,
            )
        self.leader = held
        self._gauge.set(1 if held else 0)
