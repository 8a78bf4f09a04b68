"""Several ``aixds serve`` on one Redis, as processes, and where an Envoy's ADS stream is.

Used by tests/e2e/test_control_plane_ha.py and bench/control_plane_failover.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.fleet import Edge
from tests.metrics import metric, scrape
from tests.support import Proc, Procs, RedisServer, free_port, wait_port

TOKEN = "e2e-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class ControlPlane:
    name: str
    proc: Proc
    xds_port: int
    api_port: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def stream(self, node_id: str) -> dict[str, Any] | None:
        """This control plane's ADS stream from ``node_id``, if it has one."""
        streams = httpx.get(f"{self.api}/v1/xds", timeout=2).json()["streams"]
        return next((s for s in streams if s["node_id"] == node_id), None)

    def metric(self, name: str) -> float:
        return metric(scrape(f"{self.api}/metrics", timeout=2), name)


class ControlPlanes:
    """``n`` ``aixds serve`` on the fleet's Redis, each with its own xDS and API port."""

    def __init__(self, procs: Procs, redis: RedisServer, n: int) -> None:
        self._procs = procs
        self._redis = redis
        self.all: list[ControlPlane] = []
        for i in range(n):
            xds, api = free_port(), free_port()
            self.all.append(ControlPlane(f"serve-{i}", self._start(i, xds, api), xds, api))
        for cp in self.all:
            wait_port(cp.api_port, timeout=20)

    def _start(self, i: int, xds: int, api: int) -> Proc:
        return self._procs.aixds(
            f"serve-{i}-{len(self._procs.procs)}",
            "serve",
            "--redis", self._redis.url,
            "--xds", f"127.0.0.1:{xds}",
            "--api", f"127.0.0.1:{api}",
            "--api-token", TOKEN,
            "--resync", "1",
        )  # fmt: skip

    def restart(self, cp: ControlPlane) -> None:
        """Start ``cp`` again on its ports (after it was killed)."""
        cp.proc = self._start(self.all.index(cp), cp.xds_port, cp.api_port)
        wait_port(cp.api_port, timeout=20)

    @property
    def alive(self) -> list[ControlPlane]:
        return [cp for cp in self.all if cp.proc.alive()]

    @property
    def xds(self) -> str:
        """The ``--xds`` value naming every control plane."""
        return ",".join(cp.xds for cp in self.all)

    def serving(self, node_id: str) -> tuple[ControlPlane, dict[str, Any]] | None:
        """The live control plane holding ``node_id``'s stream, with every type ACKed."""
        found = []
        for cp in self.alive:
            s = cp.stream(node_id)
            if s is not None:
                found.append((cp, s))
        if len(found) != 1:
            return None
        cp, s = found[0]
        if not all(t["acked_version"] and not t["awaiting_ack"] for t in s["types"].values()):
            return None
        return cp, s

    def holders(self, job: str) -> list[str]:
        return [cp.name for cp in self.alive if cp.metric(job) == 1.0]


def envoy_versions(edge: Edge) -> dict[str, str]:
    """Clusters, listeners and route configs Envoy holds -> the version it accepted each
    with (Envoy's config dump has no version for endpoints)."""
    dump = edge.admin_json("/config_dump")
    out: dict[str, str] = {}
    for cfg in dump["configs"]:
        for c in cfg.get("dynamic_active_clusters", []):
            out["cds/" + c["cluster"]["name"]] = c["version_info"]
        for lis in cfg.get("dynamic_listeners", []):
            out["lds/" + lis["name"]] = lis["active_state"]["version_info"]
        for r in cfg.get("dynamic_route_configs", []):
            out["rds/" + r["route_config"]["name"]] = r["version_info"]
    return out


def acked(stream: dict[str, Any]) -> dict[str, str]:
    """Type (cds, lds, rds) -> the version the stream ACKed. Endpoints are left out: their
    weights follow the load, so their version may change at any time under load."""
    return {t: s["acked_version"] for t, s in stream["types"].items() if t != "eds"}
