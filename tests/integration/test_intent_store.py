"""Intent store, rollback lock, load store and intent watcher against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from controlplane.fleet import schema
from controlplane.fleet.intent_store import RedisIntentStore, RevisionConflict, StoredIntent
from controlplane.fleet.leader import RedisLock
from controlplane.fleet.load_store import RedisLoadStore
from controlplane.fleet.registry import connect
from controlplane.intent import Intent
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from tests.support import RedisServer

pytestmark = pytest.mark.integration

DOC_V2 = json.dumps({"schema": 1, "rollouts": {"llama": {"stable": "v2"}}})
DOC_V3 = json.dumps({"schema": 1, "rollouts": {"llama": {"stable": "v3"}}})


async def wait_for(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_compare_and_set_lets_exactly_one_concurrent_writer_win(
    redis_srv: RedisServer,
) -> None:
    client = connect(redis_srv.url)
    store = RedisIntentStore(client)
    assert await store.read() == StoredIntent(0, "", None)
    first = await store.write(0, DOC_V2)
    assert first.revision == 1 and first.epoch
    results = await asyncio.gather(
        *(store.write(1, json.dumps({"schema": 1, "n": i})) for i in range(8)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, StoredIntent)]
    lost = [r for r in results if isinstance(r, RevisionConflict)]
    assert len(won) == 1 and len(lost) == 7
    assert all(c.current == 2 and c.expected == 1 for c in lost)
    stored = await store.read()
    assert stored.revision == 2 and stored.doc == won[0].doc and stored.epoch == first.epoch
    await client.aclose()


async def test_restore_only_when_missing_and_epoch_is_kept(redis_srv: RedisServer) -> None:
    client = connect(redis_srv.url)
    store = RedisIntentStore(client)
    kept = await store.write(0, DOC_V2)
    assert not await store.restore(StoredIntent(9, "other", DOC_V3))  # key exists: no-op
    await client.delete(schema.INTENT_KEY)
    assert await store.restore(kept)
    assert await store.read() == kept
    await client.aclose()


async def test_watcher_follows_events_and_restores_a_lost_intent(redis_srv: RedisServer) -> None:
    client = connect(redis_srv.url)
    store = RedisIntentStore(client)
    changes: list[int] = []
    w = IntentWatcher(
        RedisIntentStore(client),
        Intent(session_header="x-sess"),
        lambda: changes.append(1),
        IntentMetrics(CollectorRegistry()),
        resync_s=30.0,  # only events can make it fast
    )
    task = asyncio.create_task(w.run())
    try:
        await wait_for(lambda: w.synced and w.connected)
        t0 = time.monotonic()
        await store.write(0, DOC_V2)
        await wait_for(lambda: w.revision == 1)
        assert time.monotonic() - t0 < 0.5
        intent = w.current()
        assert intent.rollouts["llama"].stable == "v2" and intent.session_header == "x-sess"
        # Redis loses the key (restart without persistence): the watcher writes it back
        await client.delete(schema.INTENT_KEY)
        await client.publish(schema.INTENT_EVENTS_CHANNEL, "0")  # wakes the watcher
        for _ in range(200):
            if (await store.read()).revision == 1:
                break
            await asyncio.sleep(0.01)
        restored = await store.read()
        assert restored.revision == 1 and restored.doc == DOC_V2
        # a malformed document is skipped; the last good intent stays
        await store.write(1, "{not json")
        await asyncio.sleep(0.2)
        assert w.revision == 1
        await store.write(2, DOC_V3)
        await wait_for(lambda: w.revision == 3)
        assert w.current().rollouts["llama"].stable == "v3"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


async def test_lock_is_held_by_one_owner_and_expires(redis_srv: RedisServer) -> None:
    client = connect(redis_srv.url)
    a = RedisLock(client, schema.ROLLBACK_LOCK_KEY, "a", ttl_s=0.3)
    b = RedisLock(client, schema.ROLLBACK_LOCK_KEY, "b", ttl_s=0.3)
    assert await a.hold() and not await b.hold()
    assert await a.hold()  # renews
    assert await b.holder() == "a"
    await asyncio.sleep(0.45)  # a died: its lock expires
    assert await b.hold() and not await a.hold()
    await a.release()  # not a's: nothing happens
    assert await a.holder() == "b"
    await b.release()
    assert await a.holder() is None
    await client.aclose()


async def test_load_store_sums_across_writers_per_second(redis_srv: RedisServer) -> None:
    client = connect(redis_srv.url)
    s1, s2 = RedisLoadStore(client), RedisLoadStore(client)
    await s1.add({(1000, "llama@v1"): (10, 1), (1001, "llama@v2"): (5, 5)})
    await s2.add({(1000, "llama@v1"): (3, 0), (1003, "llama@v1"): (1, 0)})
    got = await s1.read(1000.5, 1002.0)
    assert [(b.at, b.cluster, b.success, b.error) for b in got] == [
        (1000.0, "llama@v1", 13, 1),
        (1001.0, "llama@v2", 5, 5),
    ]
    ttl = await client.ttl(schema.LOAD_PREFIX + "1000")
    assert 0 < ttl <= 600
    await client.aclose()
