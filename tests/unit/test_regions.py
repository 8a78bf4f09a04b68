"""The merged view of every region's fleet watcher: demotion, loss, return, conflicts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from controlplane.fleet.codec import encode_record
from controlplane.fleet.store import MemoryRegistry, RawEntry
from controlplane.runtime.fleet_watch import FleetMetrics, FleetWatcher
from controlplane.runtime.regions import RegionalFleet, RegionMetrics
from tests.fleetgen import replica


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watcher(clock: Clock) -> FleetWatcher:
    return FleetWatcher(
        MemoryRegistry(clock), FleetMetrics(CollectorRegistry()), lambda: None, clock=clock
    )


def put(w: FleetWatcher, rid: str, region: str, clock: Clock, ttl: float = 30.0) -> None:
    rec = replica(rid, region=region).record
    w.apply([RawEntry(rid, encode_record(rec), ttl)], full=False)
    w.last_ok = clock.now  # as a successful read does


def test_remote_region_is_demoted_then_lost_then_back() -> None:
    clock = Clock()
    us, eu = watcher(clock), watcher(clock)
    changes: list[int] = []
    fleet = RegionalFleet(
        "us",
        {"us": us, "eu": eu},
        RegionMetrics(CollectorRegistry()),
        lambda: changes.append(1),
        grace_s=10.0,
        clock=clock,
    )
    put(us, "u1/a", "us", clock)
    put(eu, "e1/a", "eu", clock)
    assert set(fleet.view) == {"u1/a", "e1/a"}
    clock.now += 6  # eu silent past half the grace: kept, but no longer fresh
    assert fleet.state("eu") == "demoted" and fleet.check() and changes == [1]
    assert fleet.view["e1/a"].expires_at == 1005.0 < clock.now < fleet.view["u1/a"].expires_at
    clock.now += 5  # past the grace: gone; the local one stays (fails static)
    assert fleet.state("eu") == "lost" and fleet.state("us") == "live"
    assert set(fleet.view) == {"u1/a"}
    put(eu, "e1/a", "eu", clock)  # eu answers again
    assert fleet.check() and fleet.state("eu") == "live"
    assert set(fleet.view) == {"u1/a", "e1/a"}


def test_same_id_in_two_regions_keeps_its_own_regions_copy() -> None:
    clock = Clock()
    us, eu = watcher(clock), watcher(clock)
    reg = CollectorRegistry()
    fleet = RegionalFleet("us", {"us": us, "eu": eu}, RegionMetrics(reg), lambda: None, clock=clock)
    put(us, "e1/a", "eu", clock, ttl=5)  # a stray copy of eu's replica in us's registry
    put(eu, "e1/a", "eu", clock, ttl=30)
    put(eu, "u1/a", "us", clock, ttl=5)  # and one of us's in eu's
    put(us, "u1/a", "us", clock, ttl=30)
    view = fleet.view
    assert view["e1/a"].expires_at == view["u1/a"].expires_at == clock.now + 30
    assert reg.get_sample_value("aixds_region_conflicting_replicas") == 2
