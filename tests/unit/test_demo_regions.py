"""The demo's regions: its fleet.yaml is one ``aixds serve`` accepts, and losing a region
kills exactly its processes, which ``restore`` starts again (real child processes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.demo.procs import Child, ProcessGroup
from controlplane.demo.regions import (
    REGION_NAMES,
    DemoRegion,
    RegionControl,
    control_app,
    fleet_yaml,
)
from controlplane.settings import load_fleet_config


def test_fleet_yaml_gives_each_region_its_registry_and_symmetric_distances(
    tmp_path: Path,
) -> None:
    urls = {r: f"redis://127.0.0.1:{6380 + i}/0" for i, r in enumerate(REGION_NAMES)}
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(list(REGION_NAMES), urls))
    cfg = load_fleet_config(path)
    assert cfg.registries("eu-west", "") == {
        "eu-west": urls["eu-west"],
        "us-east": urls["us-east"],
        "ap-south": urls["ap-south"],
    }
    d = cfg.base_intent().region_distance
    assert d["us-east"]["eu-west"] == d["eu-west"]["us-east"] < d["us-east"]["ap-south"]


def test_fleet_yaml_replicates_intent_from_the_first_region(tmp_path: Path) -> None:
    regions = list(REGION_NAMES)
    urls = {r: f"redis://127.0.0.1:{6380 + i}/0" for i, r in enumerate(regions)}
    intent = {r: f"redis://127.0.0.1:{6390 + i}/0" for i, r in enumerate(regions)}
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(regions, urls, intent))
    cfg = load_fleet_config(path)
    topo = cfg.intent_topology("ap-south")
    assert topo is not None
    assert (topo.home, topo.local, topo.home_url) == ("us-east", "ap-south", intent["us-east"])
    assert topo.urls == intent
    assert cfg.registries("ap-south", "")["us-east"] == urls["us-east"]


def test_fleet_yaml_without_urls_is_the_older_form(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_yaml(["us-east", "eu-west"], None))
    cfg = load_fleet_config(path)
    assert cfg.registries("us-east", "redis://x:1/0") == {"us-east": "redis://x:1/0"}


def _sleeper(group: ProcessGroup, name: str) -> Child:
    return group.start(name, [sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ProcessGroup]:
    g = ProcessGroup(tmp_path)
    yield g
    g.stop_all()


def test_lose_kills_only_that_region_and_restore_restarts_it(group: ProcessGroup) -> None:
    us = DemoRegion("us-east", _sleeper(group, "redis-us"), [_sleeper(group, "llm-us")])
    us.intent_redis = _sleeper(group, "redis-intent-us")
    eu = DemoRegion("eu-west", _sleeper(group, "redis-eu"), [_sleeper(group, "llm-eu")])
    ctl = RegionControl(group, [us, eu])
    old = [us.redis, *us.nodes, us.intent_redis]
    app = TestClient(control_app(ctl))

    r = app.post("/regions/us-east/lose")
    assert r.status_code == 200 and r.json() == {"us-east": "lost", "eu-west": "up"}
    assert all(c is not None and not c.alive() for c in old)
    assert eu.redis is not None and eu.redis.alive() and eu.nodes[0].alive()
    assert app.post("/regions/us-east/lose").json()["us-east"] == "lost"  # idempotent

    r = app.post("/regions/us-east/restore")
    assert r.status_code == 200 and r.json()["us-east"] == "up"
    assert us.redis is not None and us.redis.alive() and us.nodes[0].alive()
    assert us.intent_redis is not None and us.intent_redis.alive()
    assert us.intent_redis.popen.pid != old[-1].popen.pid  # type: ignore[union-attr]
    assert us.redis.popen.pid != old[0].popen.pid  # type: ignore[union-attr]
    assert us.redis.argv == old[0].argv  # type: ignore[union-attr]
    # the group stops the new processes, not the dead ones
    assert us.redis in group.children and old[0] not in group.children
    group.stop_all()
    assert not us.redis.alive()


def test_unknown_region_is_a_404_with_the_known_ones(group: ProcessGroup) -> None:
    ctl = RegionControl(group, [DemoRegion("us-east")])
    r = TestClient(control_app(ctl)).post("/regions/mars/lose")
    assert r.status_code == 404
    assert "us-east" in r.json()["detail"]
