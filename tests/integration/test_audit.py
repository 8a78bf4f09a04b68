"""The audit stream against real redis-servers: paging, capping, a broken stream that
loses no change, and the audit log of a replica region (written at the intent home, read
from the region's copy)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from controlplane.fleet import schema
from controlplane.fleet.audit import Actor, RedisAuditLog, controlplane, entry
from controlplane.fleet.intent_replica import ReplicatedIntentStore
from controlplane.fleet.intent_store import RedisIntentStore
from controlplane.fleet.registry import connect
from tests.integration.conftest import Pair
from tests.integration.test_intent_replication import caught_up, link_up
from tests.rollout_app import build
from tests.support import RedisServer

pytestmark = pytest.mark.integration

AUTH = {"authorization": "Bearer tok"}


@pytest.fixture
async def client(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_srv.url)
    yield c
    await c.aclose()


def api(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def test_entries_read_back_oldest_first_and_page_with_since(client: aioredis.Redis) -> None:
    log = RedisAuditLog(client)
    ids = [
        await log.append(entry(Actor("alice", "r1"), "drain", f"n{i}", {"a": i}, {"a": i + 1}))
        for i in range(5)
    ]
    latest = await log.read(3)
    assert [e.target for e in latest] == ["n2", "n3", "n4"]
    assert [e.id for e in latest] == ids[2:]
    e = latest[0]
    assert (e.who, e.action, e.old, e.new, e.request_id) == (
        "alice",
        "drain",
        {"a": 2},
        {"a": 3},
        "r1",
    )
    assert [e.target for e in await log.read(100, since=ids[1])] == ["n2", "n3", "n4"]
    assert [e.target for e in await log.read(2, since=ids[1])] == ["n2", "n3"]
    assert await log.read(10, since=ids[-1]) == []
    ms = ids[0].split("-")[0]  # a bare <ms> means <ms>-0, exclusive
    after = [i for i in ids if (int(i.split("-")[0]), int(i.split("-")[1])) > (int(ms), 0)]
    assert [e.id for e in await log.read(10, since=ms)] == after
    raw = await client.xrange(schema.AUDIT_KEY, count=1)
    assert set(raw[0][1]) == {
        "at",
        "who",
        "action",
        "target",
        "old",
        "new",
        "revision",
        "request_id",
    }


async def test_the_stream_is_capped(client: aioredis.Redis) -> None:
    log = RedisAuditLog(client, max_len=100)
    for i in range(450):
        await log.append(entry(controlplane("test"), "x", str(i), None, i))
    n = await client.xlen(schema.AUDIT_KEY)
    assert 100 <= n <= 200, n  # MAXLEN ~ trims whole nodes (100 entries each by default)
    assert (await log.read(1))[0].target == "449"


async def test_a_broken_audit_stream_loses_no_change_and_is_counted(
    client: aioredis.Redis,
) -> None:
    await client.set(schema.AUDIT_KEY, "not a stream")  # XADD now fails: WRONGTYPE
    a = build(store=RedisIntentStore(client), audit=RedisAuditLog(client))
    async with api(a.app) as c:
        r = await c.post("/v1/drains/n1", headers=AUTH)
        assert r.status_code == 200, r.text
        stored = await RedisIntentStore(client).read()
        assert stored.revision == 1 and '"drained":["n1"]' in (stored.doc or "")
        metrics = (await c.get("/metrics")).text
        assert 'aixds_audit_writes_total{result="failed"} 1.0' in metrics
        r = await c.get("/v1/audit")
        assert r.status_code == 503 and r.json()["error"] == "redis_unreachable"
        assert "WRONGTYPE" in r.json()["detail"]
        await client.delete(schema.AUDIT_KEY)
        await c.post("/v1/drains/n2", headers=AUTH)
        got = (await c.get("/v1/audit")).json()["entries"]
        assert [(e["who"], e["target"], e["revision"]) for e in got] == [("api-token", "n2", 2)]


async def test_a_replica_region_writes_its_changes_to_the_homes_audit_log(
    pair: Pair,
) -> None:
    home, local = connect(pair.home.url), connect(pair.replica.url)
    try:
        await link_up(local)
        eu = build(
            store=ReplicatedIntentStore(local, home, region="eu", home="us"),
            audit=RedisAuditLog(home, local),
        )
        async with api(eu.app) as c:
            r = await c.post("/v1/drains/n1", headers=AUTH)
            assert r.status_code == 200, r.text
            at_home = await RedisAuditLog(home).read(10)
            assert [(e.who, e.action, e.target, e.revision) for e in at_home] == [
                ("api-token", "drain", "n1", 1)
            ]
            await caught_up(home)
            got = (await c.get("/v1/audit")).json()["entries"]  # read from eu's copy
            assert [e["id"] for e in got] == [at_home[0].id]
    finally:
        await home.aclose()
        await local.aclose()
