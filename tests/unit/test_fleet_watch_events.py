"""The fleet watcher notices a dropped event stream at once, not at its next resync.

A killed Redis primary (before a Sentinel failover, or a plain restart) drops the pub/sub
connection; the watcher must reconnect and subscribe again right away, or events are lost
until the next full resync (``--resync``, 5 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry

from controlplane.fleet.store import MemoryRegistry
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from tests.fleetgen import replica
from tests.support import eventually


async def now(value: bool) -> bool:
    return value


async def test_dropped_event_stream_reconnects_before_the_resync() -> None:
    reg = MemoryRegistry(time.time)
    metrics = CollectorRegistry()
    w = FleetWatcher(
        reg, FleetMetrics(metrics), lambda: None, resync_interval_s=60.0, max_backoff_s=0.1
    )
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: now(w.connected))
        await reg.publish(replica("n1/a").record, ttl_s=30)
        await eventually(lambda: now("n1/a" in w.view), 1)
        reg.drop_events()

        def reconnected() -> bool:
            return (metrics.get_sample_value("aixds_registry_disconnects_total") or 0) == 1

        await eventually(lambda: now(reconnected() and w.connected), 1)
        # subscribed again: a new record arrives by event, long before the resync
        await reg.publish(replica("n2/b").record, ttl_s=30)
        await eventually(lambda: now("n2/b" in w.view), 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
