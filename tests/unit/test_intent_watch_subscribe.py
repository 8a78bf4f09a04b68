"""The intent watcher reads the intent only once its event subscription is live, so a
write that lands between its first read and its subscription is not missed until the
next resync (seen in CI: a region's watcher stayed on revision 0 for a whole resync)."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry

from controlplane.fleet.intent_store import SUBSCRIBED, MemoryIntentStore, StoredIntent
from controlplane.intent import Intent
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from tests.support import eventually

DOC = '{"schema": 1, "rollouts": {"llama": {"stable": "v2"}}}'


class WriteAfterFirstRead(MemoryIntentStore):
    """Another control plane writes right after the watcher's first read returns."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read(self) -> StoredIntent:
        got = await super().read()
        self.reads += 1
        if self.reads == 1:
            await self.write(0, DOC)
        return got


async def test_a_write_right_after_the_first_read_is_seen_without_a_resync() -> None:
    store = WriteAfterFirstRead()
    w = IntentWatcher(
        store, Intent(), lambda: None, IntentMetrics(CollectorRegistry()), resync_s=60.0
    )
    task = asyncio.create_task(w.run())
    try:

        async def at_one() -> bool:
            return w.revision == 1

        await eventually(at_one, 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_events_start_with_subscribed() -> None:
    store = MemoryIntentStore()
    events = store.events()
    assert await anext(events) == SUBSCRIBED
    await store.write(0, DOC)
    assert await anext(events) == 1
    await events.aclose()
