"""A registry per region: two real redis-servers, one watcher each, one merged view."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controlplane.fleet.registry import RedisRegistry, connect
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from controlplane.runtime.regions import RegionalFleet, RegionMetrics
from tests.fleetgen import replica
from tests.integration.test_registry import stop, wait_for
from tests.support import RedisServer, redis_server

pytestmark = pytest.mark.integration


@pytest.fixture
def two_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    (tmp_path / "us").mkdir()
    (tmp_path / "eu").mkdir()
    with redis_server(tmp_path / "us") as us, redis_server(tmp_path / "eu") as eu:
        yield us, eu


def region_watcher(url: str, recovery_grace_s: float) -> FleetWatcher:
    return FleetWatcher(
        RedisRegistry(connect(url)),
        FleetMetrics(CollectorRegistry()),
        lambda: None,
        resync_interval_s=0.2,
        recovery_grace_s=recovery_grace_s,
        max_backoff_s=0.2,
    )


async def test_remote_region_lost_after_grace_and_back(
    two_redis: tuple[RedisServer, RedisServer],
) -> None:
    us_srv, eu_srv = two_redis
    us, eu = region_watcher(us_srv.url, 5.0), region_watcher(eu_srv.url, 0.0)
    registry = CollectorRegistry()
    fleet = RegionalFleet(
        "us", {"us": us, "eu": eu}, RegionMetrics(registry), lambda: None, grace_s=1.0
    )
    tasks = [asyncio.create_task(t()) for t in (us.run, eu.run, fleet.run)]
    us_w, eu_w = RedisRegistry(connect(us_srv.url)), RedisRegistry(connect(eu_srv.url))
    try:
        await us_w.publish(replica("u1/a", region="us").record, ttl_s=30)
        await eu_w.publish(replica("e1/a", region="eu").record, ttl_s=30)
        await wait_for(lambda: set(fleet.view) == {"u1/a", "e1/a"})
        assert fleet.connected and fleet.synced_once

        eu_srv.stop()
        await wait_for(lambda: fleet.state("eu") == "demoted", within=3)
        assert "e1/a" in fleet.view and not eu.connected
        await wait_for(lambda: set(fleet.view) == {"u1/a"}, within=3)
        assert fleet.state("eu") == "lost" and fleet.connected
        await wait_for(
            lambda: registry.get_sample_value("aixds_region_state", {"region": "eu"}) == 2
        )

        eu_srv.start()  # empty until its agents publish again
        await eu_w.publish(replica("e1/a", region="eu").record, ttl_s=30)
        await wait_for(lambda: set(fleet.view) == {"u1/a", "e1/a"}, within=5)
        await wait_for(lambda: fleet.state("eu") == "live")
    finally:
        for t in tasks:
            await stop(t)
        await us_w.client.aclose()
        await eu_w.client.aclose()
