"""``UiFeed``: the dashboard's latest snapshot, its timeline, and a way to wait for the next.

``run(build)`` (spawned by ``aixds serve``) calls ``build()`` every ``interval_s``,
turns the difference to the previous snapshot into timeline events (``ui_timeline``) and
wakes every waiting event stream. Without the loop (an app built in a test), readers
call ``refresh_if_older`` and get the same behaviour on demand. ``close()`` ends every
stream so the HTTP server can stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.api.ui_timeline import Event, Timeline, changes

log = logging.getLogger(__name__)

Build = Callable[[], Awaitable[dict[str, Any]]]
EVENTS_SENT = 100
"""Newest timeline events sent with each snapshot."""


class UiFeed:
    def __init__(self, *, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self.timeline = Timeline()
        self.current: dict[str, Any] | None = None
        """The last snapshot (``ui_snapshot.snapshot``), without events."""
        self.seq = 0
        """Bumped by every ``publish``."""
        self.closed = False
        self._built_at = -float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed_c: asyncio.Condition | None = None
        self._lock_l: asyncio.Lock | None = None

    def _sync(self) -> tuple[asyncio.Condition, asyncio.Lock]:
        """The condition and lock of the running event loop (an app driven by a test
        client may see a new loop per request; the server has one)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._changed_c is None or self._lock_l is None:
            self._loop, self._changed_c, self._lock_l = loop, asyncio.Condition(), asyncio.Lock()
        return self._changed_c, self._lock_l

    def publish(self, snap: dict[str, Any]) -> list[Event]:
        """Take ``snap`` as the current snapshot; return the events it added."""
        events = changes(self.current, snap)
        for e in events:
            log.info("timeline: %s", e["text"])
        self.timeline.extend(events)
        self.current = snap
        self.seq += 1
        return events

    def message(self) -> dict[str, Any]:
        """What a browser gets: the current snapshot with the newest events."""
        return {**(self.current or {}), "events": self.timeline.newest(EVENTS_SENT)}

    async def refresh(self, build: Build) -> None:
        changed, lock = self._sync()
        async with lock:
            snap = await build()
            self._built_at = self._clock()
            self.publish(snap)
        async with changed:
            changed.notify_all()

    async def refresh_if_older(self, build: Build, age_s: float) -> None:
        if self._clock() - self._built_at >= age_s:
            await self.refresh(build)

    async def wait_newer(self, seq: int, timeout_s: float) -> bool:
        """Until a snapshot newer than ``seq`` exists (True) or ``timeout_s`` passed."""
        if self.seq > seq or self.closed:
            return self.seq > seq
        changed, _ = self._sync()
        async with changed:
            try:
                await asyncio.wait_for(
                    changed.wait_for(lambda: self.seq > seq or self.closed), timeout_s
                )
            except TimeoutError:
                return False
        return self.seq > seq

    async def run(self, build: Build) -> None:
        while not self.closed:
            try:
                await self.refresh(build)
            except Exception:
                log.exception("dashboard snapshot failed; trying again")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        self.closed = True
        changed, _ = self._sync()
        async with changed:
            changed.notify_all()
