"""One node's agent, whole: the node lock, discovery, the publishers and the executor.

``run_node`` is the agent's one spawning function. It takes the node lock (exit code 3
if another agent holds it), publishes the servers discovery finds, and starts the root
tasks, each named and watched: re-discovery (with ``--config``/``--docker``), the
executor (with Redis), the lock keeper. It returns when ``stop`` is set (0), a loop died
(1) or the lock was lost to another agent (3). Shutdown order: root tasks, calls in
flight, probes, publishers, records (kept if the lock was lost: they belong to the
agent that took over), then the lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx
import redis.asyncio as aioredis

from controlplane.agent.aio import raise_if_cancelled, wait_event
from controlplane.agent.config import AgentConfig
from controlplane.agent.gpus.faults import FaultClearWatcher
from controlplane.agent.gpus.source import GpuSource
from controlplane.agent.lock import LockHeld, NodeLock
from controlplane.agent.placement.desired import RedisDesired
from controlplane.agent.placement.executor import Executor, ServerHandle
from controlplane.agent.placement.loaders import make_loader
from controlplane.agent.publisher import Agent, OwnNodeWriter, RegistryHealth, ReplicaPublisher
from controlplane.agent.servers.adapters import make_adapter
from controlplane.agent.servers.discovery import Discovery, DockerScan, ServerSpec
from controlplane.agent.servers.ondemand import OnDemand
from controlplane.fleet.store import RegistryWriter

log = logging.getLogger(__name__)

EXIT_LOCK = 3
"""Exit code when another agent holds (or took) this node's lock."""


@runtime_checkable
class GpuProvider(Protocol):
    """A GPU source per server (``gpus.wiring.NodeGpus``)."""

    def for_server(self, spec: ServerSpec) -> GpuSource: ...

    def release(self, spec: ServerSpec) -> None: ...


class SharedGpu:
    """One source for every server (tests, ``--gpu none``)."""

    def __init__(self, source: GpuSource) -> None:
        self._source = source

    def for_server(self, spec: ServerSpec) -> GpuSource:
        return self._source

    def release(self, spec: ServerSpec) -> None:
        return None


@dataclass(slots=True)
class _Replica:
    spec: ServerSpec
    publisher: ReplicaPublisher
    handle: ServerHandle


class NodeAgent:
    """The replicas of one node as discovery finds them, published and converged."""

    def __init__(
        self,
        cfg: AgentConfig,
        writer: RegistryWriter,
        gpus: GpuProvider,
        http: httpx.AsyncClient,
        redis: aioredis.Redis | None,
    ) -> None:
        self.cfg = cfg
        self._writer = OwnNodeWriter(writer, cfg.node)
        self._gpus = gpus
        self._http = http
        self._health = RegistryHealth()
        self.agent = Agent(timing=cfg.timing)
        self.replicas: dict[str, _Replica] = {}
        self.executor = (
            None
            if redis is None
            else Executor(RedisDesired(redis, cfg.node), self._handles, cfg.exec_timing)
        )

    def _handles(self) -> dict[str, ServerHandle]:
        return {name: r.handle for name, r in self.replicas.items()}

    async def apply(self, specs: list[ServerSpec]) -> None:
        """Make the published replicas match ``specs``: drop the gone or changed, add the new."""
        want = {s.replica_name: s for s in specs}
        for name in [n for n, r in self.replicas.items() if want.get(n) != r.spec]:
            r = self.replicas.pop(name)
            await self.agent.drop(r.publisher.target.replica_id)
            self._gpus.release(r.spec)
            log.info("stopped publishing %s (%s)", r.publisher.target.replica_id, r.spec.origin)
        for name, spec in want.items():
            if name not in self.replicas:
                try:
                    self._add(spec)
                except Exception:  # e.g. its GPU source cannot start: skip it, retry next scan
                    log.exception("cannot publish %s (%s)", spec.url, spec.origin)

    def _add(self, spec: ServerSpec) -> None:
        cfg = self.cfg
        target = cfg.target(spec)
        versions = spec.version_map(cfg.versions)
        adapter = OnDemand(
            make_adapter(
                spec.kind, spec.url, self._http, versions, spec.metrics_url, cfg.reference_tps
            ),
            spec.url,
            self._http,
            cfg.available.get(spec.replica_name, ()),
        )
        ex = self.executor
        name = spec.replica_name
        pub = ReplicaPublisher(
            target,
            adapter,
            self._gpus.for_server(spec),
            self._writer,
            cfg.timing,
            self._health,
            overlay=None if ex is None else (lambda probe: ex.overlay(name, probe)),
        )
        loader = make_loader(
            spec.kind,
            spec.url,
            self._http,
            cfg.exec_timing.call_timeout_s,
            lambda: {a.name for a in (pub.raw_probe.available if pub.raw_probe else ())},
        )
        handle = ServerHandle(loader, lambda: pub.raw_probe, lambda: pub.gpu_uuids)
        self.replicas[name] = _Replica(spec, pub, handle)
        self.agent.add(pub)
        log.info(
            "publishing %s <- %s %s (%s) as %s:%d",
            target.replica_id, spec.kind.value, spec.url, spec.origin, target.address, target.port,
        )  # fmt: skip

    async def discover(self, discovery: Discovery) -> None:
        """Scan again every ``discover_interval_s``, forever."""
        while True:
            await asyncio.sleep(self.cfg.discover_interval_s)
            await self.apply(await discovery.scan())

    async def close(self, remove_records: bool) -> None:
        if self.executor is not None:
            await self.executor.close()
        await self.agent.stop(remove=remove_records)
        for r in self.replicas.values():
            self._gpus.release(r.spec)
        self.replicas.clear()


async def acquire_lock(lock: NodeLock, takeover: bool, stop: asyncio.Event) -> bool:
    """Take the lock, waiting out a Redis outage; ``False`` if ``stop`` came first."""
    delay = 0.1
    said = False
    while not stop.is_set():
        try:
            await lock.acquire(takeover)
            raise_if_cancelled()
            return True
        except LockHeld:
            raise
        except Exception as e:  # Redis unreachable: nothing can be published anyway
            raise_if_cancelled()
            if not said:
                log.warning("cannot reach Redis for %s (%s); retrying", lock.key, e)
                said = True
        await wait_event(stop, delay)
        delay = min(2.0, delay * 2)
    return False


async def run_node(
    cfg: AgentConfig,
    writer: RegistryWriter,
    gpus: GpuProvider,
    stop: asyncio.Event,
    *,
    redis: aioredis.Redis | None = None,
    docker: DockerScan | None = None,
) -> int:
    """Run the node's agent until ``stop``: 0, 1 if a loop died, 3 if the lock was lost.

    Without ``redis`` there is no lock and no executor (tests of publishing alone).
    Raises ``LockHeld`` when another agent holds the node and ``cfg.takeover`` is off.
    """
    lock = None if redis is None else NodeLock(redis, cfg.node, cfg.lock_ttl_s)
    if lock is not None and not await acquire_lock(lock, cfg.takeover, stop):
        return 0
    lost = asyncio.Event()
    # Short timeouts: a hung server must not hold a probe for long (load calls set their
    # own). trust_env=False: no proxy from the environment between agent and servers.
    timeout = httpx.Timeout(1.0, connect=0.5)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
        node = NodeAgent(cfg, writer, gpus, http, redis)
        discovery = Discovery(cfg.servers, cfg.config_path, docker, cfg.advertise)
        roots: list[asyncio.Task[None]] = []
        try:
            await node.apply(await discovery.scan())
            log.info(
                "agent %s (%s/%s) up: %d server(s)",
                cfg.node,
                cfg.region,
                cfg.zone,
                len(node.replicas),
            )
            if discovery.dynamic:
                roots.append(_spawn("discovery", node.discover(discovery)))
            if node.executor is not None:
                roots.append(_spawn("executor", node.executor.run()))
            if lock is not None:
                roots.append(_spawn("node lock", lock.keep(lost)))
            if redis is not None:
                clears = FaultClearWatcher(
                    redis.get,
                    cfg.node,
                    lambda: [
                        getattr(r.publisher.gpus, "source", r.publisher.gpus)
                        for r in node.replicas.values()
                    ],
                )
                roots.append(_spawn("fault clear", clears.run()))
            waits = [
                _spawn("stop", stop.wait()),
                _spawn("loop ended", node.agent.ended.wait()),
                _spawn("lock lost", lost.wait()),
            ]
            done, _ = await asyncio.wait([*waits, *roots], return_when=asyncio.FIRST_COMPLETED)
            crashed = node.agent.ended.is_set() or any(t in roots for t in done)
            await _cancel(waits)
        finally:
            await _cancel(roots)
            await node.close(remove_records=not lost.is_set())
            if lock is not None and not lost.is_set():
                await lock.release()
    if lost.is_set():
        return EXIT_LOCK
    return 1 if crashed else 0


def _spawn(name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report)
    return task


def _report(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.get_name() in ("stop", "loop ended", "lock lost"):
        return
    err = task.exception()
    if err is not None:
        log.error("task %r crashed", task.get_name(), exc_info=err)
    elif task.get_name() != "node lock":
        log.error("task %r ended by itself", task.get_name())


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
