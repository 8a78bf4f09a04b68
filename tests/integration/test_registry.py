"""Registry and fleet watcher against a real redis-server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from controlplane.fleet import schema
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.fleet.store import decode_entry
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from tests.fleetgen import replica
from tests.support import RedisServer

pytestmark = pytest.mark.integration


async def wait_for(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_schema_round_trip_and_ttl(redis_srv: RedisServer) -> None:
    reg = RedisRegistry(connect(redis_srv.url))
    rec = replica("gpu-1/vllm-8001", running=3).record
    await reg.publish(rec, ttl_s=0.5)
    (entry,) = await reg.read_all()
    assert decode_entry(entry) == rec
    assert 0 < entry.ttl_s <= 0.5
    assert await reg.client.hget(schema.replica_key(rec.replica_id), "record") is not None
    await asyncio.sleep(0.7)
    assert await reg.read_all() == []
    await reg.client.aclose()


async def test_publish_announces_on_events_channel(redis_srv: RedisServer) -> None:
    reg = RedisRegistry(connect(redis_srv.url))
    got: list[str] = []

    async def listen() -> None:
        async for rid in reg.events():
            got.append(rid)
            return

    t = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed
    await reg.publish(replica("n1/a").record, ttl_s=5)
    await asyncio.wait_for(t, 3)
    assert got == ["n1/a"]
    await reg.client.aclose()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_watcher(url: str) -> tuple[FleetWatcher, CollectorRegistry, list[int]]:
    registry = CollectorRegistry()
    changes: list[int] = []
    w = FleetWatcher(
        RedisRegistry(connect(url)),
        FleetMetrics(registry),
        lambda: changes.append(1),
        resync_interval_s=0.3,
        recovery_grace_s=1.0,
        max_backoff_s=0.2,
    )
    return w, registry, changes


async def test_watcher_follows_events_and_skips_malformed(redis_srv: RedisServer) -> None:
    w, registry, _ = make_watcher(redis_srv.url)
    task = asyncio.create_task(w.run())
    writer = RedisRegistry(connect(redis_srv.url))
    try:
        await writer.publish(replica("n1/a", running=1).record, ttl_s=10)
        await wait_for(lambda: "n1/a" in w.view)
        await writer.publish(replica("n1/a", running=5).record, ttl_s=10)
        await wait_for(lambda: w.view["n1/a"].record.load.running == 5)
        # malformed: wrong schema version and garbage, both skipped and counted
        await writer.client.hset(schema.replica_key("bad/1"), "record", '{"v": 99}')
        await writer.client.hset(schema.replica_key("bad/2"), "record", "garbage")
        await writer.client.publish(schema.EVENTS_CHANNEL, "bad/1")
        await wait_for(
            lambda: (registry.get_sample_value("aixds_registry_malformed_records_total") or 0) >= 2
        )
        assert set(w.view) == {"n1/a"}
        # a deleted key leaves the view at the next resync
        await writer.client.delete(schema.replica_key("n1/a"))
        await wait_for(lambda: "n1/a" not in w.view)
    finally:
        await stop(task)
        await writer.client.aclose()


async def test_redis_restart_freezes_then_recovers_without_emptying(redis_srv: RedisServer) -> None:
    w, registry, _ = make_watcher(redis_srv.url)
    task = asyncio.create_task(w.run())
    writer = RedisRegistry(connect(redis_srv.url))
    try:
        await writer.publish(replica("n1/a").record, ttl_s=1.0)
        await wait_for(lambda: "n1/a" in w.view and w.connected)
        redis_srv.stop()
        await wait_for(lambda: not w.connected)
        await asyncio.sleep(1.2)  # longer than the record's TTL
        assert "n1/a" in w.view  # frozen, not emptied
        redis_srv.start()  # a restarted Redis is empty
        await wait_for(lambda: w.connected, within=5)
        assert "n1/a" in w.view  # kept for the recovery grace
        assert w.view["n1/a"].expires_at > time.time()
        # agents re-publish: the view follows
        await writer.publish(replica("n2/a").record, ttl_s=5.0)
        await wait_for(lambda: "n2/a" in w.view)
        # after the grace, the replica nobody re-published leaves
        await wait_for(lambda: "n1/a" not in w.view, within=3)
        assert registry.get_sample_value("aixds_registry_disconnects_total") == 1
    finally:
        await stop(task)
        await writer.client.aclose()
