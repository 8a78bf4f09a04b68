"""The agent's loops: probe each model server; publish its record on change and on a beat.

Each replica has two tasks that share only the latest probe: ``probe`` (every poll
interval) and ``publish`` (at once on a meaningful change, at most 20 times a second, and
every interval anyway, which refreshes the record's TTL). A registry outage never stops
probing: publishing retries with a capped backoff and the newest state wins.
``Agent`` runs the publishers of a node: replicas join (``add``) and leave (``drop``) as
discovery finds them; each task is named, a crash is logged and sets ``Agent.ended``; on
stop the probes are cancelled, then the publishers, then the records removed.
``OwnNodeWriter`` refuses any record that is not the node's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from controlplane.agent.aio import raise_if_cancelled, wait_event
from controlplane.agent.gpus.source import GpuSource
from controlplane.agent.servers.adapter import UNREACHABLE, ModelServerAdapter, Probe
from controlplane.fleet.model import GpuStats, LoadStats, ModelState, ReplicaRecord, ServerKind
from controlplane.fleet.store import RegistryWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """A replica's identity: every record field that does not come from a probe."""

    replica_id: str
    node: str
    region: str
    zone: str
    address: str
    port: int
    kind: ServerKind
    host_mem_bytes: int = 0
    """Host memory the node's sleeping weights may take (0: not reported)."""


@dataclass(frozen=True, slots=True)
class Timing:
    """How often the agent looks and writes."""

    interval_s: float = 1.0
    """Publish at least this often, changed or not (refreshes the TTL)."""
    ttl_s: float = 3.0
    """Lifetime of a record in the registry if the agent stops refreshing it."""
    poll_interval_s: float = 0.25
    """Probe each model server this often."""
    lost_hold_s: float = 300.0
    """Publish a server that stopped answering with the models it served (``lost``) for
    this long after its last answer; 0: never."""
    min_gap_s: float = 0.05
    """Least time between two publishes of one replica (at most 20/s)."""
    retry_max_s: float = 2.0
    """Cap of the backoff between publish attempts while the registry is down."""
    shutdown_s: float = 2.0
    """At shutdown, give up removing records after this long."""


def build_record(
    target: Target, probe: Probe, gpus: tuple[GpuStats, ...], now: float
) -> ReplicaRecord:
    return ReplicaRecord(
        replica_id=target.replica_id,
        node=target.node,
        region=target.region,
        zone=target.zone,
        address=target.address,
        port=target.port,
        server_kind=target.kind,
        models=probe.models,
        load=probe.load,
        gpus=gpus,
        timestamp=now,
        speed=1.0 if probe.speed is None else probe.speed,
        capacity=1.0 if probe.capacity is None else probe.capacity,
        speed_measured=probe.speed is not None,
        failures=probe.failures,
        available=probe.available,
        sleeping=bool(probe.sleeping),
        host_mem_bytes=target.host_mem_bytes,
        lost=probe.lost,
    )


def load_changed(a: LoadStats, b: LoadStats) -> bool:
    """A load change worth publishing at once (small jitter waits for the next beat)."""

    def counts(x: float, y: float) -> bool:
        return abs(x - y) >= max(2.0, 0.2 * max(x, y))

    return (
        counts(a.queue_waiting, b.queue_waiting)
        or counts(a.running, b.running)
        or abs(a.kv_cache_usage - b.kv_cache_usage) >= 0.05
    )


def worth_publishing(
    last: tuple[Probe, tuple[GpuStats, ...]] | None, now: tuple[Probe, tuple[GpuStats, ...]]
) -> bool:
    """Models, their states, reachability, GPU faults, speed or capacity, failed loads,
    available models, sleep or load changed meaningfully."""
    if last is None:
        return True
    (p0, g0), (p1, g1) = last, now
    return (
        p0.reachable != p1.reachable
        or p0.models != p1.models
        or _gpu_flags(g0) != _gpu_flags(g1)
        or load_changed(p0.load, p1.load)
        or p0.speed != p1.speed
        or p0.capacity != p1.capacity
        or p0.failures != p1.failures
        or p0.available != p1.available
        or p0.sleeping != p1.sleeping
        or p0.lost != p1.lost
    )


def _gpu_flags(gpus: tuple[GpuStats, ...]) -> tuple[tuple[int, bool, bool], ...]:
    return tuple((g.index, g.faulty, g.throttled) for g in gpus)


class RegistryHealth:
    """Shared by all publishers of an agent, so an outage is logged once, and its end."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, err: BaseException) -> None:
        if not self.down:
            self.down = True
            log.warning("registry unavailable (%s: %s); retrying", type(err).__name__, err)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.info("registry reachable again")


@dataclass(slots=True)
class LostModels:
    """What a server served at its last answer, to publish as ``lost`` while it does not
    answer (``hold_s`` at most). An answer, even one with no models, forgets it."""

    hold_s: float
    serving: tuple[tuple[str, str], ...] = ()
    at: float = -math.inf

    def apply(self, probe: Probe, now: float) -> Probe:
        if probe.reachable:
            self.serving = tuple(
                sorted({(m.name, m.version) for m in probe.models if m.state in _SERVING})
            )
            self.at = now
            return probe
        if self.serving and now - self.at < self.hold_s:
            return replace(probe, lost=self.serving)
        return probe


_SERVING = (ModelState.READY, ModelState.WARMING)


class ReplicaPublisher:
    """Keeps one replica's record in the registry in step with its model server."""

    def __init__(
        self,
        target: Target,
        adapter: ModelServerAdapter,
        gpus: GpuSource,
        registry: RegistryWriter,
        timing: Timing,
        health: RegistryHealth | None = None,
        clock: Callable[[], float] = time.time,
        overlay: Callable[[Probe], Probe] | None = None,
    ) -> None:
        """``overlay`` turns each probe into what is published (the executor's phases)."""
        self.target = target
        self._adapter = adapter
        self._gpus = gpus
        self._registry = registry
        self._timing = timing
        self._health = health or RegistryHealth()
        self._clock = clock
        self._overlay = overlay
        self._lost = LostModels(timing.lost_hold_s)
        self._raw: Probe | None = None
        self._latest: tuple[Probe, tuple[GpuStats, ...]] | None = None
        self._published: tuple[Probe, tuple[GpuStats, ...]] | None = None
        self._changed = asyncio.Event()
        self.publishes = 0
        """Successful publishes so far (for tests and the agent's own logs)."""

    @property
    def gpus(self) -> GpuSource:
        """The GPU source of this replica (the fault-clear watcher clears its latches)."""
        return self._gpus

    @property
    def raw_probe(self) -> Probe | None:
        """The latest probe as the server answered it (before the overlay); None at first."""
        return self._raw

    @property
    def gpu_uuids(self) -> frozenset[str]:
        """The uuids of the GPUs the latest read saw (empty at first or when unknown)."""
        return frozenset(g.uuid for g in self._latest[1] if g.uuid) if self._latest else frozenset()

    async def probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        failing = overlay_failing = False
        while True:
            started = loop.time()
            try:
                probe, gpus = await self._adapter.probe(), self._gpus.read()
                failing = False
            except Exception:  # a bug in an adapter or GPU source: publish no models
                if not failing:
                    log.exception("probe of %s failed", self.target.replica_id)
                failing = True
                probe, gpus = UNREACHABLE, ()
            self._raw = probe
            if self._overlay is not None:
                try:
                    probe = self._overlay(probe)
                    overlay_failing = False
                except Exception:  # a bug in the executor's overlay: publish the raw probe
                    if not overlay_failing:
                        log.exception("overlay of %s failed", self.target.replica_id)
                    overlay_failing = True
            probe = self._lost.apply(probe, loop.time())
            self._latest = (probe, gpus)
            if worth_publishing(self._published, self._latest):
                self._changed.set()
            await asyncio.sleep(max(0.0, started + self._timing.poll_interval_s - loop.time()))

    async def publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        t = self._timing
        next_beat = loop.time()
        backoff = 0.0
        while True:
            wait = next_beat - loop.time()
            if self._latest is None:
                await self._changed.wait()
            elif wait > 0:
                await wait_event(self._changed, wait)
            self._changed.clear()
            latest = self._latest
            assert latest is not None
            rec = build_record(self.target, latest[0], latest[1], self._clock())
            try:
                await self._registry.publish(rec, t.ttl_s)
            except Exception as e:  # registry down or slow: keep the loop alive
                raise_if_cancelled()
                self._health.failed(e)
                backoff = min(t.retry_max_s, max(0.1, backoff * 2))
                await asyncio.sleep(backoff)
                next_beat = loop.time()
                continue
            raise_if_cancelled()
            self._health.ok()
            backoff = 0.0
            self._published = latest
            self.publishes += 1
            next_beat = loop.time() + t.interval_s
            await asyncio.sleep(t.min_gap_s)

    async def remove(self) -> None:
        await self._registry.remove(self.target.replica_id)


class Agent:
    """The replica publishers of one node; replicas may join and leave while it runs."""

    def __init__(self, timing: Timing | None = None) -> None:
        self._timing = timing or Timing()
        self._running: dict[
            str, tuple[ReplicaPublisher, asyncio.Task[None], asyncio.Task[None]]
        ] = {}
        self.ended = asyncio.Event()
        """Set when a loop ended by itself (a bug): the agent should stop, exit 1."""

    @property
    def publishers(self) -> list[ReplicaPublisher]:
        return [p for p, _, _ in self._running.values()]

    def __contains__(self, replica_id: str) -> bool:
        return replica_id in self._running

    def add(self, pub: ReplicaPublisher) -> None:
        """Start probing and publishing ``pub``'s replica (its id must be new)."""
        rid = pub.target.replica_id
        if rid in self._running:
            raise ValueError(f"replica {rid} is already published")
        probe = self._spawn(f"probe {rid}", pub.probe_loop())
        publish = self._spawn(f"publish {rid}", pub.publish_loop())
        self._running[rid] = (pub, probe, publish)

    async def drop(self, replica_id: str, remove: bool = True) -> None:
        """Stop one replica's loops, then (``remove``) delete its record."""
        entry = self._running.pop(replica_id, None)
        if entry is None:
            return
        pub, probe, publish = entry
        await _cancel([probe])
        await _cancel([publish])
        if remove:
            await self._remove([pub])

    async def stop(self, remove: bool = True) -> None:
        """Stop every replica: all probes, then all publishers, then the records."""
        entries = list(self._running.values())
        self._running.clear()
        # Order matters: no new probe, then no publish that could land after the removal.
        await _cancel([probe for _, probe, _ in entries])
        await _cancel([publish for _, _, publish in entries])
        if remove:
            await self._remove([pub for pub, _, _ in entries])

    async def _remove(self, pubs: Sequence[ReplicaPublisher]) -> None:
        ids = [p.target.replica_id for p in pubs]
        if not ids:
            return
        try:
            async with asyncio.timeout(self._timing.shutdown_s):
                results = await asyncio.gather(*(p.remove() for p in pubs), return_exceptions=True)
        except TimeoutError:
            log.warning("removing records %s timed out; they expire by TTL", ids)
            return
        for rid, res in zip(ids, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("could not remove %s (%s); it expires by TTL", rid, res)
            else:
                log.info("removed %s", rid)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = _spawn(name, coro)
        task.add_done_callback(lambda t: None if t.cancelled() else self.ended.set())
        return task


class OwnNodeWriter:
    """A ``RegistryWriter`` that writes only this node's records (any other is a bug)."""

    def __init__(self, inner: RegistryWriter, node: str) -> None:
        self._inner = inner
        self._node = node
        self._prefix = node + "/"

    async def publish(self, rec: ReplicaRecord, ttl_s: float) -> None:
        if rec.node != self._node or not rec.replica_id.startswith(self._prefix):
            raise ValueError(
                f"record {rec.replica_id} (node {rec.node}) is not node {self._node}'s"
            )
        await self._inner.publish(rec, ttl_s)

    async def remove(self, replica_id: str) -> None:
        if not replica_id.startswith(self._prefix):
            raise ValueError(f"replica {replica_id} is not node {self._node}'s")
        await self._inner.remove(replica_id)


def _spawn(name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_end)
    return task


def _report_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    err = task.exception()
    if err is not None:
        log.error("task %r crashed", task.get_name(), exc_info=err)
    else:
        log.error("task %r ended by itself", task.get_name())


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    # gather(return_exceptions) so one task's error does not hide the others' cleanup.
    await asyncio.gather(*tasks, return_exceptions=True)
