"""Issue 13 item 2 end to end: Redis high availability with Sentinel.

``aixds serve`` and the agents get ``--redis redis+sentinel://...``; a primary, a replica
and three Sentinels run as real processes (``tests.redis_ha``), with Envoy, fake vLLM
servers and steady load through the edge. ``kill -9`` of the primary must fail no request
(the control plane fails static over the gap), the registry must come back on the new
primary within Sentinel's detection time plus a few seconds, and a drain written after the
failover must reach Envoy.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis

from controlplane.fleet import schema
from tests.e2e.fleet import Fleet, Load
from tests.redis_ha import sentinel_group
from tests.support import Procs, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "sentinel-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
DOWN_AFTER_MS = 1000
RESUME_LIMIT_S = DOWN_AFTER_MS / 1000 + 8.0
"""Sentinel's detection time plus a few seconds (election, promotion, reconnect backoff,
agents' next publish)."""


def test_primary_kill_9_under_load_fails_over_with_no_failed_request(
    procs: Procs, tmp_path: Path
) -> None:
    with sentinel_group(tmp_path / "redis", down_after_ms=DOWN_AFTER_MS) as group:
        fleet = Fleet(procs, group.primary(), redis_url=group.url)
        fleet.start_serve("--api-token", TOKEN)
        reps = [fleet.add_replica(), fleet.add_replica()]
        ids = {r.replica_id for r in reps}
        ports = {r.port for r in reps}
        edge = fleet.add_edge()
        fleet.wait_routable(edge, "llama", 2)
        flaps: list[tuple[float, object]] = []
        promoted: list[float] = []

        def envoy_unchanged() -> None:
            """Both replicas in Envoy, healthy, at every look during the failover."""
            hosts = edge.hosts("llama@v1")
            health = {p: h["health"].get("eds_health_status", "HEALTHY") for p, h in hosts.items()}
            if set(hosts) != ports or set(health.values()) != {"HEALTHY"}:
                flaps.append((time.time(), health))

        def resumed(killed_at: float, old_port: int) -> bool:
            envoy_unchanged()
            if not promoted and group.primary_port() not in (None, old_port):
                promoted.append(time.time())
            if not httpx.get(f"{fleet.api}/healthz", timeout=2).json()["redis_connected"]:
                return False
            view = httpx.get(f"{fleet.api}/v1/fleet", timeout=2).json()["replicas"]
            # every record was written after the kill: by an agent, to the new primary
            return {r["replica_id"] for r in view} == ids and all(
                r["timestamp"] > killed_at for r in view
            )

        with Load(edge.url, "llama", concurrency=8) as load:
            load.wait_requests(40)
            before = load.total
            old_port, killed_at = group.kill_primary()
            wait_until(
                lambda: resumed(killed_at, old_port),
                RESUME_LIMIT_S,
                interval=0.1,
                what="fresh records from the new primary in GET /v1/fleet",
            )
            resume_s = time.time() - killed_at
            promoted_s = (promoted[0] if promoted else group.wait_failover(old_port)) - killed_at
            served_during = load.total - before
            # a drain written after the failover goes to the new primary and reaches Envoy
            target = reps[0]
            r = httpx.post(f"{fleet.api}/v1/drains/{target.replica_id}", headers=AUTH, timeout=30)
            assert r.status_code == 200, r.text
            t0 = time.time()
            wait_until(
                lambda: (
                    (edge.hosts("llama@v1").get(target.port, {}).get("health", {})).get(
                        "eds_health_status"
                    )
                    in (None, "DRAINING")
                ),
                10,
                what="the drain in Envoy",
            )
            drain_s = time.time() - t0
            load.wait_requests(40)
        print(
            f"\nSentinel failover under load: new primary named {promoted_s:.2f} s after "
            f"kill -9, registry fresh in GET /v1/fleet {resume_s:.2f} s after it; "
            f"{served_during} requests served meanwhile, {load.total} in all, "
            f"{load.failed} failed; drain in Envoy {drain_s:.2f} s after the API call"
        )
        assert load.failed == 0, load.failures[:5]
        assert flaps == [], flaps[:5]
        assert group.primary_port() != old_port
        with redis.Redis(port=group.primary().port, decode_responses=True) as new_primary:
            assert new_primary.exists(schema.replica_key(target.replica_id))
            assert new_primary.info("replication")["role"] == "master"
