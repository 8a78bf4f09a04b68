"""Garbage under the registry's keys in a real redis-server: skipped and counted, never
mistaken for a lost connection.

Anyone with access to Redis can write anything: records that are not JSON, not UTF-8,
near-valid (fuzzed), keys of the wrong Redis type, key names and event messages that are
not UTF-8. The fleet watcher must keep every good replica, count the bad ones as
malformed, and stay connected (before the fix, one such key failed every read, so the
view froze and the reconcile loop stopped deciding).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.fleet import schema
from controlplane.fleet.codec import RecordError
from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.fleet.store import RawEntry, decode_entry
from tests.fleetgen import replica
from tests.integration.test_registry import make_watcher
from tests.support import RedisServer, redis_server
from tests.unit.test_codec_fuzz import mutated

pytestmark = pytest.mark.integration

MALFORMED = "aixds_registry_malformed_records_total"


async def wait_for(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def decodes(rid: str, raw: bytes) -> bool:
    try:
        decode_entry(RawEntry(rid, raw, 1.0))
    except RecordError:
        return False
    return True


async def write_garbage(r: aioredis.Redis, garbage: list[bytes]) -> set[str]:
    """Bad keys of every kind plus ``garbage`` records; the ids that decode anyway."""
    await r.hset(schema.replica_key("bad/not-utf8"), schema.RECORD_FIELD, b"\xff\xfe{}")
    await r.hset(schema.replica_key("bad/not-json"), schema.RECORD_FIELD, "garbage")
    await r.set(schema.replica_key("bad/a-string"), "not a hash")
    await r.rpush(schema.replica_key("bad/a-list"), "x")
    await r.hset(schema.REPLICA_PREFIX.encode() + b"\xff\xfe", schema.RECORD_FIELD, b"{}")
    good: set[str] = set()
    for i, raw in enumerate(garbage):
        rid = f"fuzz/{i}"
        await r.hset(schema.replica_key(rid), schema.RECORD_FIELD, raw)
        if decodes(rid, raw):
            good.add(rid)
    return good


async def garbage_keeps_the_good_replicas(url: str, garbage: list[bytes]) -> None:
    w, registry, _ = make_watcher(url)
    task = asyncio.create_task(w.run())
    writer = RedisRegistry(connect(url))
    raw = aioredis.Redis.from_url(url)
    try:
        await writer.publish(replica("n1/a").record, ttl_s=30)
        await wait_for(lambda: "n1/a" in w.view and w.connected)
        also_good = await write_garbage(raw, garbage)
        bad = 5 + len(garbage) - len(also_good)
        for rid in ["bad/not-utf8", "bad/a-string", *(f"fuzz/{i}" for i in range(len(garbage)))]:
            await raw.publish(schema.EVENTS_CHANNEL, rid)
        await raw.publish(schema.EVENTS_CHANNEL, b"\xff\xfe")  # an event that is not UTF-8
        before = registry.get_sample_value(MALFORMED) or 0
        # the next resync reads every key: each bad one is counted once more
        await wait_for(lambda: (registry.get_sample_value(MALFORMED) or 0) >= before + bad)
        await writer.publish(replica("n2/a").record, ttl_s=30)  # events still followed
        await wait_for(lambda: "n2/a" in w.view)
        assert set(w.view) == {"n1/a", "n2/a"} | also_good
        assert w.connected
        assert registry.get_sample_value("aixds_registry_disconnects_total") == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.client.aclose()
        await raw.aclose()


async def test_garbage_keys_are_skipped_and_counted(redis_srv: RedisServer) -> None:
    await garbage_keeps_the_good_replicas(redis_srv.url, [b"", b"[" * 50_000, b'{"v":1}'])


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(mutated().map(str.encode) | st.binary(max_size=200), min_size=1, max_size=6))
def test_fuzzed_records_in_redis_are_skipped_and_counted(
    tmp_path: Path, garbage: list[bytes]
) -> None:
    with redis_server(tmp_path) as srv:
        asyncio.run(garbage_keeps_the_good_replicas(srv.url, garbage))
