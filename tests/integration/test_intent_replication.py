"""Replicated intent against real redis-servers: a home primary and a region's replica.

The replica is a real ``--replicaof`` of the home (no hand-made sync). Writes go to the
home; the replica region's store, watcher and API follow through Redis replication; with
the home gone a write is refused with a clear reason and the last intent stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ReadOnlyError

from controlplane.fleet.intent_replica import ReplicatedIntentStore
from controlplane.fleet.intent_store import IntentUnwritable, RedisIntentStore
from controlplane.fleet.registry import connect
from controlplane.intent import Intent
from controlplane.runtime.intent_replication import IntentReplication, ReplicationMetrics
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from tests.integration.conftest import Pair
from tests.integration.test_intent_store import DOC_V2, DOC_V3, wait_for
from tests.rollout_app import build

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

AUTH = {"authorization": "Bearer tok"}


async def link_up(client: aioredis.Redis, up: bool = True, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        info = await client.info("replication")
        if (info.get("master_link_status") == "up") == up:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replication link never {'up' if up else 'down'}")


async def caught_up(home: aioredis.Redis) -> None:
    """Every write so far has reached the replica (WAIT on the primary)."""
    assert await home.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]


@pytest.fixture
async def clients(pair: Pair) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    home, local = connect(pair.home.url), connect(pair.replica.url)
    await link_up(local)
    yield home, local
    await home.aclose()
    await local.aclose()


def eu_store(clients: tuple[aioredis.Redis, aioredis.Redis]) -> ReplicatedIntentStore:
    home, local = clients
    return ReplicatedIntentStore(local, home, region="eu", home="us")


@contextlib.asynccontextmanager
async def watching(
    store: ReplicatedIntentStore, resync_s: float = 30.0
) -> AsyncIterator[IntentWatcher]:
    """A running watcher of ``store`` (by default only the replicated PUBLISH is fast)."""
    w = IntentWatcher(
        store,
        Intent(),
        lambda: None,
        IntentMetrics(CollectorRegistry()),
        resync_s=resync_s,
        max_backoff_s=0.2,
    )
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        task.cancel()


async def test_a_write_at_home_reaches_the_replica_regions_watcher(
    clients: tuple[aioredis.Redis, aioredis.Redis],
) -> None:
    store = eu_store(clients)
    async with watching(store) as w:
        await wait_for(lambda: w.connected)
        t0 = time.monotonic()
        written = await store.write(0, DOC_V2)
        await wait_for(lambda: w.revision == 1, within=2.0)
        log.info("replica watcher adopted revision 1 after %.1f ms", (time.monotonic() - t0) * 1e3)
        assert w.stored == written
        assert w.current().rollouts["llama"].stable == "v2"
        assert await store.read() == written  # the local copy is the replica's
        with pytest.raises(ReadOnlyError):  # and a region could not write it by mistake
            await RedisIntentStore(clients[1]).write(1, DOC_V3)


async def test_home_down_refuses_writes_keeps_the_last_intent_and_recovers(
    pair: Pair, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    store = eu_store(clients)
    async with watching(store) as w:
        await store.write(0, DOC_V2)
        await wait_for(lambda: w.revision == 1)
        await clients[0].save()  # the restarted home loads it back
        pair.home.stop()
        with pytest.raises(IntentUnwritable) as err:
            await store.write(1, DOC_V3)
        assert err.value.code == "intent_home_unreachable"
        assert err.value.detail.startswith("intent home region 'us' is unreachable from 'eu' (")
        assert err.value.detail.endswith("): writes are refused to avoid split brain")
        with pytest.raises(IntentUnwritable):
            await store.read_latest()
        await link_up(clients[1], up=False)
        stale = await store.read()  # the replica keeps serving its copy
        assert stale.revision == 1 and stale.doc == DOC_V2
        await asyncio.sleep(0.5)
        assert w.connected and w.revision == 1

        pair.home.start()
        await link_up(clients[1])
        written = await store.write(1, DOC_V3)
        assert written.revision == 2 and written.epoch == stale.epoch
        await wait_for(lambda: w.revision == 2)


async def test_a_home_restarted_empty_gets_the_intent_back_from_a_region(
    pair: Pair, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    store = eu_store(clients)
    async with watching(store, resync_s=0.2) as w:
        kept = await store.write(0, DOC_V2)
        await wait_for(lambda: w.revision == 1)
        pair.home.stop()
        pair.home.start()  # no persistence: empty, and the replica resyncs to empty
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await RedisIntentStore(clients[0]).read() == kept:
                break
            await asyncio.sleep(0.05)
        assert await RedisIntentStore(clients[0]).read() == kept  # written back at the home
        assert w.revision == 1


async def test_moving_the_home_with_failover(
    pair: Pair, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    home, local = clients
    before = await eu_store(clients).write(0, DOC_V2)
    await caught_up(home)
    # The procedure of docs/regions.md: FAILOVER on the old home (pauses its writes, waits
    # for the replica to catch up, promotes it, turns itself into its replica).
    await home.execute_command("FAILOVER", "TO", "127.0.0.1", pair.replica.port)  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 10
    while (await local.info("replication"))["role"] != "master":
        assert time.monotonic() < deadline, "failover did not promote the replica"
        await asyncio.sleep(0.05)
    await link_up(home)  # the old home now replicates the new one
    # A control plane still configured with the old home: refused, clearly.
    with pytest.raises(IntentUnwritable) as err:
        await eu_store(clients).write(1, DOC_V3)
    assert err.value.code == "intent_home_read_only"
    assert "set intent.home in fleet.yaml to the new home" in err.value.detail
    # With intent.home changed to eu: writes go on in the same history.
    moved = ReplicatedIntentStore(home, local, region="us", home="eu")
    written = await moved.write(1, DOC_V3)
    assert written.revision == 2 and written.epoch == before.epoch
    await wait_for_async(lambda: moved.read(), lambda s: s.revision == 2)


async def wait_for_async(read, ok, within: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        got = await read()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"last seen: {got}"
        await asyncio.sleep(0.05)


async def test_probe_reports_roles_revisions_and_a_lost_home(
    pair: Pair, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    home, local = clients
    registry = CollectorRegistry()
    rep = IntentReplication("us", "eu", {"us": home, "eu": local}, ReplicationMetrics(registry))
    await eu_store(clients).write(0, DOC_V2)
    await wait_for_async(rep.tick, lambda r: r["eu"].state.revision == 1)
    doc = rep.report()
    assert doc["home"] == "us" and doc["region"] == "eu"
    us, eu = doc["regions"]["us"], doc["regions"]["eu"]
    assert (us["role"], us["redis_role"], us["revision"], us["problems"]) == (
        "home",
        "primary",
        1,
        [],
    )
    assert (eu["role"], eu["link_up"], eu["behind"], eu["problems"]) == ("replica", True, 0, [])
    assert eu["lag_bytes"] is not None and eu["lag_bytes"] >= 0
    assert registry.get_sample_value("aixds_intent_home_reachable") == 1
    assert registry.get_sample_value("aixds_intent_copy_revision", {"region": "eu"}) == 1

    pair.home.stop()
    reports = await wait_for_async(rep.tick, lambda r: not r["eu"].state.link_up)
    assert reports["us"].problems[0].startswith("unreachable (")
    assert reports["eu"].problems[0].startswith("replication link down")
    assert reports["eu"].problems[0].endswith("applying the last intent it has (revision 1)")
    assert registry.get_sample_value("aixds_intent_home_reachable") == 0
    assert registry.get_sample_value("aixds_intent_replication_link_up", {"region": "eu"}) == 0


async def test_api_answers_503_with_the_reason_when_the_home_is_unreachable(
    pair: Pair, clients: tuple[aioredis.Redis, aioredis.Redis]
) -> None:
    a = build(store=eu_store(clients))
    await a.intents.refresh()
    transport = httpx.ASGITransport(app=a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/v1/rollouts/llama", json={"to": "v2"}, headers=AUTH)
        assert r.status_code == 200, r.text
        r = await c.post("/v1/drains/n5", json={}, headers=AUTH)
        assert r.status_code == 200, r.text
        await caught_up(clients[0])
        await clients[0].save()
        pair.home.stop()

        r = await c.post("/v1/drains/n1", json={}, headers=AUTH)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "intent_home_unreachable"
        assert body["detail"].startswith("intent home region 'us' is unreachable from 'eu' (")
        assert body["detail"].endswith(
            "): writes are refused to avoid split brain; "
            "the last intent (revision 2) keeps being applied"
        )
        assert r.headers["retry-after"] == "1"
        doc = (await c.get("/v1/intent")).json()
        assert doc["revision"] == 2 and doc["doc"]["drained"] == ["n5"]

        pair.home.start()
        await link_up(clients[1])
        r = await c.post("/v1/drains/n1", json={}, headers=AUTH)
        assert r.status_code == 200, r.text
        stored = await eu_store(clients).read_latest()
        assert stored.revision == 3
        assert stored.doc is not None
        kept = json.loads(stored.doc)
        assert kept["drained"] == ["n1", "n5"] and kept["rollouts"]["llama"]["stable"] == "v2"
