"""An end-to-end fleet on real parts, as processes: Redis, ``aixds serve``, edge Envoys,
fake vLLM servers with their agents, and a load generator that counts every outcome.

Every process is started through ``tests.support.Procs`` and killed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import Proc, Procs, RedisServer, free_port, wait_port, wait_until

AGENT_INTERVAL_S = 0.5
AGENT_TTL_S = 2.0


@dataclass
class Replica:
    name: str
    node: str
    port: int
    model: str
    version: str
    server: Proc
    agent: Proc | None = None

    @property
    def replica_id(self) -> str:
        return f"{self.node}/vllm-{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Edge:
    proc: Proc
    port: int
    admin: int
    region: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin_json(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.admin}{path}", timeout=2).json()

    def hosts(self, cluster: str) -> dict[int, dict[str, Any]]:
        """port -> {weight, health flags, priority} as Envoy has them now."""
        out: dict[int, dict[str, Any]] = {}
        for c in self.admin_json("/clusters?format=json").get("cluster_statuses", []):
            if c["name"] != cluster:
                continue
            for h in c.get("host_statuses", []):
                port = h["address"]["socket_address"]["port_value"]
                out[port] = {
                    "weight": h.get("weight", 1),
                    "priority": h.get("priority", 0),
                    "health": h.get("health_status", {}),
                }
        return out

    def stat(self, name: str) -> int:
        text = httpx.get(f"http://127.0.0.1:{self.admin}/stats?filter=^{name}$", timeout=2).text
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
        return 0

    def dynamic_versions(self) -> dict[str, str]:
        """Resource versions Envoy accepted: cluster name -> version_info."""
        dump = self.admin_json("/config_dump?resource=dynamic_active_clusters")
        return {c["cluster"]["name"]: c["version_info"] for c in dump.get("configs", [])}


@dataclass
class Fleet:
    procs: Procs
    redis: RedisServer
    xds_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    activator_port: int = field(default_factory=free_port)
    """Used only when a test passes ``--activator`` (``activator_args()``)."""
    replicas: list[Replica] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    serve_proc: Proc | None = None
    redis_url: str = ""
    """What ``--redis`` the control plane and the agents get; empty: ``redis.url``
    (a Sentinel URL, ``tests.redis_ha``, in the Sentinel tests)."""

    @property
    def registry_url(self) -> str:
        return self.redis_url or self.redis.url

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def activator_args(self) -> tuple[str, ...]:
        return ("--activator", f"127.0.0.1:{self.activator_port}")

    def start_serve_two_regions(self, tmp: Path) -> Proc:
        """``aixds serve --region us`` of a fleet.yaml with a second region ``eu`` (its
        registry: DB 1 of the same Redis), with the activator: every metric family the
        metrics tests look for."""
        fleet_yaml = tmp / "fleet.yaml"
        other = self.redis.url.rsplit("/", 1)[0] + "/1"
        fleet_yaml.write_text(
            "regions:\n"
            f"  us: {{redis: '{self.redis.url}', distance: {{eu: 80}}}}\n"
            f"  eu: {{redis: '{other}', distance: {{us: 80}}}}\n"
        )
        return self.start_serve(
            "--config", str(fleet_yaml), "--region", "us", *self.activator_args()
        )

    def start_serve(self, *extra: str) -> Proc:
        self.serve_proc = self.procs.aixds(
            f"serve-{len(self.procs.procs)}",
            "serve",
            "--redis",
            self.registry_url,
            "--xds",
            f"127.0.0.1:{self.xds_port}",
            "--api",
            f"127.0.0.1:{self.api_port}",
            "--resync",
            "1",
            *extra,
        )
        wait_port(self.api_port, timeout=15)
        return self.serve_proc

    def add_replica(
        self,
        model: str = "llama",
        version: str = "v1",
        *,
        node: str | None = None,
        region: str = "us",
        zone: str = "us-a",
        agent: bool = True,
        server_args: tuple[str, ...] = (),
        gpu: str = "none",
        agent_args: tuple[str, ...] = (),
    ) -> Replica:
        port = free_port()
        node = node or f"gpu-{len(self.replicas) + 1}"
        server = self.procs.aixds(
            f"llm-{node}-{port}",
            "fake-llm",
            "--listen",
            f"127.0.0.1:{port}",
            "--model",
            model,
            "--version",
            version,
            "--replica-id",
            f"{node}/vllm-{port}",
            *server_args,
        )
        rep = Replica(f"{node}-{port}", node, port, model, version, server)
        self.replicas.append(rep)
        wait_port(port)
        if agent:
            self.start_agent(rep, region=region, zone=zone, gpu=gpu, extra=agent_args)
        return rep

    def start_agent(
        self,
        rep: Replica,
        *,
        region: str = "us",
        zone: str = "us-a",
        gpu: str = "none",
        extra: tuple[str, ...] = (),
    ) -> Proc:
        """Start ``rep``'s agent; ``extra`` flags go last (e.g. ``--warmup``, ``--drain``)."""
        rep.agent = self.procs.aixds(
            f"agent-{rep.name}",
            "agent",
            "--redis",
            self.registry_url,
            "--node",
            rep.node,
            "--region",
            region,
            "--zone",
            zone,
            "--server",
            f"vllm={rep.url}",
            "--interval",
            str(AGENT_INTERVAL_S),
            "--ttl",
            str(AGENT_TTL_S),
            "--gpu",
            gpu,
            *extra,
        )
        return rep.agent

    def add_edge(
        self, region: str = "us", zone: str = "us-a", xds: str = "", extra: tuple[str, ...] = ()
    ) -> Edge:
        """``xds``: the ``--xds`` value (default: this fleet's control plane); ``extra`` flags
        go last (e.g. ``--ca``)."""
        port, admin = free_port(), free_port()
        proc = self.procs.aixds(
            f"envoy-{region}-{port}",
            "envoy",
            "--xds",
            xds or f"127.0.0.1:{self.xds_port}",
            "--node-id",
            f"edge-{region}-{port}",
            "--region",
            region,
            "--zone",
            zone,
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin}",
            *extra,
        )
        edge = Edge(proc, port, admin, region)
        self.edges.append(edge)
        wait_port(admin, timeout=15)
        return edge

    def wait_routable(self, edge: Edge, model: str, n_hosts: int, timeout: float = 20.0) -> None:
        """Until Envoy has ``n_hosts`` endpoints for the model and answers through it."""
        cluster = f"{model}@" + next(r.version for r in self.replicas if r.model == model)

        def ready() -> bool:
            if len(edge.hosts(cluster)) != n_hosts:
                return False
            r = chat(edge.url, model)
            return r.status_code == 200

        wait_until(ready, timeout, interval=0.1, what=f"{n_hosts} hosts of {cluster} routable")


def chat(
    base: str, model: str, *, header: bool = False, timeout: float = 10.0, **kw: Any
) -> httpx.Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {}
    if header:
        headers["x-model"] = model
    else:
        body["model"] = model
    return httpx.post(
        f"{base}/v1/chat/completions", json=body, headers=headers, timeout=timeout, **kw
    )


class Load:
    """Closed-loop load in a background thread: ``concurrency`` workers, each sending one
    request after another. Counts statuses, transport errors and the replica that answered."""

    def __init__(
        self,
        base: str,
        model: str,
        *,
        concurrency: int = 8,
        max_tokens: int = 4,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base, self.model, self.concurrency, self.max_tokens = (
            base,
            model,
            concurrency,
            max_tokens,
        )
        self.headers = headers or {}
        self.status: Counter[int] = Counter()
        self.errors: list[str] = []
        self.replicas: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def total(self) -> int:
        return sum(self.status.values()) + len(self.errors)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.status.items() if s != 200) + len(self.errors)

    def reset(self) -> None:
        with self._lock:
            self.status.clear()
            self.errors.clear()
            self.replicas.clear()
            self.failures.clear()

    def wait_requests(self, n: int, timeout: float = 30.0) -> None:
        start = self.total
        wait_until(lambda: self.total - start >= n, timeout, what=f"{n} more requests")

    async def _main(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(timeout=15.0, limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": self.max_tokens,
        }
        while not self._stop.is_set():
            try:
                r = await client.post(
                    f"{self.base}/v1/chat/completions", json=body, headers=self.headers
                )
                with self._lock:
                    self.status[r.status_code] += 1
                    self.replicas[r.headers.get("x-replica", "?")] += 1
                    if r.status_code != 200:
                        self.failures.append((time.time(), f"{r.status_code} {r.text[:200]}"))
            except httpx.HTTPError as e:
                with self._lock:
                    self.errors.append(repr(e))
                    self.failures.append((time.time(), repr(e)))
                with contextlib.suppress(Exception):
                    await asyncio.sleep(0.01)


def prime(reps: list[Replica], seconds: float = 2.0) -> None:
    """One solo sequence of ``seconds`` on every replica at once, straight to the server:
    each agent then has clean samples of its replica's speed with one sequence running.
    Until its first sample an agent publishes the default capacity (weight 100), so a
    replica first measured mid-test (from a crowded batch, say) would move the weights
    then; ``settle`` alone cannot tell a default 100 from a measured one."""

    def solo(rep: Replica) -> None:
        body = {"model": rep.model, "messages": [{"role": "user", "content": "prime"}],
                "max_tokens": int(seconds * 100)}  # fmt: skip
        r = httpx.post(f"{rep.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 200, r.text

    threads = [threading.Thread(target=solo, args=(r,)) for r in reps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
