"""Several regions as processes, each with its own registry: per region a redis-server, an
``aixds serve --region R`` reading every region's registry (one fleet.yaml for all), fake
vLLM replicas whose agents write to their region's Redis, and edge Envoys.

Each region is a ``tests.e2e.fleet.Fleet`` of its own (its Redis, its control plane's
ports, its replicas), so everything a one-region test does works per region. Shared by
the region-loss e2e tests and ``bench.region_failover``; every process is started through
one ``tests.support.Procs`` and stopped with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.fleet import Edge, Fleet, Replica
from tests.support import Procs, RedisServer, wait_port

REGIONS = ("a", "b", "c")
DISTANCE: Mapping[str, Mapping[str, int]] = {
    "a": {"b": 10, "c": 50},
    "b": {"a": 10, "c": 40},
    "c": {"a": 50, "b": 40},
}
"""a's nearest region is b: a's Envoys fail over to b first, then c."""


def fleet_yaml(redis_urls: Mapping[str, str], distance: Mapping[str, Mapping[str, int]]) -> str:
    """fleet.yaml's per-region form (JSON is YAML): each region's registry and distances."""
    doc = {
        "regions": {
            r: {"redis": url, "distance": dict(distance.get(r, {}))}
            for r, url in redis_urls.items()
        }
    }
    return json.dumps(doc, indent=1)


@dataclass
class Regions:
    """One ``Fleet`` per region; ``start()`` writes fleet.yaml and starts the Redis servers."""

    procs: Procs
    tmp: Path
    names: Sequence[str] = REGIONS
    distance: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: DISTANCE)
    fleets: dict[str, Fleet] = field(default_factory=dict)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.tmp / "fleet.yaml"

    def start(self) -> Regions:
        for r in self.names:
            d = self.tmp / f"region-{r}"
            d.mkdir(parents=True, exist_ok=True)
            redis = RedisServer(d)
            redis.start()
            self.fleets[r] = Fleet(self.procs, redis)
        urls = {r: f.redis.url for r, f in self.fleets.items()}
        dist = {r: {o: n for o, n in self.distance.get(r, {}).items() if o in urls} for r in urls}
        self.config.write_text(fleet_yaml(urls, dist))
        return self

    def __getitem__(self, region: str) -> Fleet:
        return self.fleets[region]

    def start_serve(self, *extra: str, grace_s: float = 4.0) -> None:
        """``aixds serve --region R`` for every region (``extra`` flags for each)."""
        for r, f in self.fleets.items():
            f.start_serve(
                "--region", r, "--config", str(self.config), "--region-grace", str(grace_s), *extra
            )

    def add_replicas(
        self,
        region: str,
        n: int,
        model: str = "llama",
        version: str = "v1",
        server_args: tuple[str, ...] = (),
    ) -> list[Replica]:
        """``n`` fake vLLM replicas in ``region`` (zone ``R-1``), each with its agent."""
        f = self.fleets[region]
        return [
            f.add_replica(
                model,
                version,
                node=f"{region}-gpu-{len(f.replicas) + 1}",
                region=region,
                zone=f"{region}-1",
                server_args=server_args,
            )
            for _ in range(n)
        ]

    def stop(self) -> None:
        """Stop every process, then the Redis servers (not among ``procs``)."""
        self.procs.stop_all()
        for f in self.fleets.values():
            f.redis.stop()

    def add_edge(self, region: str) -> Edge:
        """An edge Envoy in ``region``, fed by that region's control plane."""
        return self.fleets[region].add_edge(region=region, zone=f"{region}-1")

    def region_of(self) -> dict[str, str]:
        """replica id (the ``x-replica`` header) -> its region."""
        return {rep.replica_id: r for r, f in self.fleets.items() for rep in f.replicas}

    def kill(self, region: str, replicas: Sequence[Replica] | None = None) -> None:
        """kill -9 the region's model servers (all, or ``replicas``) and, when all, its
        redis-server too, back to back. Agents and the control plane live on."""
        f = self.fleets[region]
        for rep in f.replicas if replicas is None else replicas:
            rep.server.kill()
        if replicas is None:
            f.redis.stop()

    def restore(self, region: str, replicas: Sequence[Replica] | None = None) -> None:
        """Restart what ``kill`` stopped: the region's Redis (empty) if it is down, and its
        dead model servers on their old ports; the agents publish them again."""
        f = self.fleets[region]
        if f.redis.proc is None:
            f.redis.start()
        todo = [r for r in (f.replicas if replicas is None else replicas) if not r.server.alive()]
        for rep in todo:
            rep.server.start()
        for rep in todo:
            wait_port(rep.port)
