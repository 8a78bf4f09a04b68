"""Every background loop starts here: named, supervised, cancelled in reverse order.

A loop that crashes is logged with its traceback and restarted after a back-off; it is
never lost silently. ``stop()`` cancels loops in the reverse of their start order and
waits for each (bounded), so later loops that depend on earlier ones stop first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

LoopFactory = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(self, *, restart_delay_s: float = 0.5, max_restart_delay_s: float = 5.0) -> None:
        self._tasks: list[tuple[str, asyncio.Task[None]]] = []
        self._restart_delay_s = restart_delay_s
        self._max_restart_delay_s = max_restart_delay_s
        self.crashes: dict[str, int] = {}

    def spawn(self, name: str, factory: LoopFactory) -> None:
        """Run ``factory()`` as task ``name``; restart it if it raises."""
        task = asyncio.create_task(self._supervise(name, factory), name=name)
        self._tasks.append((name, task))

    async def _supervise(self, name: str, factory: LoopFactory) -> None:
        delay = self._restart_delay_s
        while True:
            try:
                await factory()
                log.info("loop %s finished", name)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.crashes[name] = self.crashes.get(name, 0) + 1
                log.exception("loop %s crashed; restarting in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(self._max_restart_delay_s, delay * 2)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self._tasks]

    async def stop(self, timeout_s: float = 5.0) -> None:
        for name, task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            if not task.done():
                log.warning("loop %s did not stop within %.1fs", name, timeout_s)
        self._tasks.clear()
