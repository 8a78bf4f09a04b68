"""Redis Sentinel: the registry, its watcher (pub/sub included) and the leader lock follow
a failover to the new primary. Real redis-server processes: a primary, a replica and three
Sentinels (``tests.redis_ha``); the primary is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controlplane.fleet import schema
from controlplane.fleet.leader import RedisLock
from controlplane.fleet.redis_url import connect
from controlplane.fleet.registry import RedisRegistry
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from tests.fleetgen import replica
from tests.redis_ha import SentinelGroup, sentinel_group
from tests.support import eventually

pytestmark = pytest.mark.integration


async def now(value: bool) -> bool:
    return value


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path) as g:
        yield g


async def test_registry_watcher_and_lock_follow_a_failover(group: SentinelGroup) -> None:
    writer = RedisRegistry(connect(group.url))
    # A resync far away: a record published after the failover must reach the view
    # through the events channel, i.e. the watcher subscribed again on the new primary.
    reader = RedisRegistry(connect(group.url))
    watcher = FleetWatcher(
        reader,
        FleetMetrics(CollectorRegistry()),
        lambda: None,
        resync_interval_s=60.0,
        recovery_grace_s=5.0,
        max_backoff_s=0.5,
    )
    lock = RedisLock(writer.client, schema.ROLLBACK_LOCK_KEY, "me", ttl_s=30)
    watch = asyncio.create_task(watcher.run())
    writes: list[tuple[float, bool]] = []

    async def publish_forever() -> None:
        """An agent: one record every 0.2 s; each try and whether it worked."""
        while True:
            rec = replace(replica("n1/a").record, timestamp=time.time())
            try:
                await writer.publish(rec, ttl_s=3.0)
                writes.append((time.time(), True))
            except Exception:
                writes.append((time.time(), False))
            await asyncio.sleep(0.2)

    agent = asyncio.create_task(publish_forever())
    try:
        assert await lock.hold()
        await eventually(lambda: now("n1/a" in watcher.view))
        old, killed_at = await asyncio.to_thread(group.kill_primary)
        promoted_at = await asyncio.to_thread(group.wait_failover, old)
        # the agent writes to the new primary ...
        await eventually(lambda: now(any(ok and t > promoted_at for t, ok in writes)), 15)
        resumed_at = next(t for t, ok in writes if ok and t > killed_at)

        # ... and the watcher reads it from there: a record written after the kill
        def fresh() -> bool:
            return watcher.connected and watcher.view["n1/a"].record.timestamp > killed_at

        await eventually(lambda: now(fresh()), 10)
        seen_at = time.time()
        # events (not a resync) bring a replica that appears only now
        await writer.publish(replace(replica("n2/b").record, timestamp=time.time()), ttl_s=3)
        await eventually(lambda: now("n2/b" in watcher.view), 3)
        # the lock was replicated: still ours on the new primary, and renewable
        assert await lock.holder() == "me"
        assert await lock.hold()
        print(
            f"\nfailover: new primary named {promoted_at - killed_at:.2f} s after the kill, "
            f"first write {resumed_at - killed_at:.2f} s, watcher fresh "
            f"{seen_at - killed_at:.2f} s; failed writes "
            f"{sum(1 for _, ok in writes if not ok)}"
        )
        assert seen_at - killed_at < 1.0 + 10.0  # down-after-milliseconds + a few seconds
    finally:
        for task in (agent, watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await writer.client.aclose()
        await reader.client.aclose()
