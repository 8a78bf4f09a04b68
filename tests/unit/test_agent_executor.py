"""The executor wired as in the agent: desired entries -> calls -> states in published records.

A real ``VllmAdapter`` and ``ReplicaPublisher`` probe ``FakeLoraServer`` (a vLLM with the
runtime LoRA API); the desired key is in memory (the Redis path is in the integration
tests). Every record the publisher writes is kept, so the tests see the state sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from controlplane.agent.gpus.source import NoGpu
from controlplane.agent.placement.converge import ExecTiming
from controlplane.agent.placement.desired import MemoryDesired
from controlplane.agent.placement.executor import Executor, ServerHandle
from controlplane.agent.placement.loaders import VllmLoraLoader
from controlplane.agent.publisher import ReplicaPublisher, Target, Timing
from controlplane.agent.servers.vllm import VllmAdapter
from controlplane.fleet.model import ModelState, ReplicaRecord, ServerKind
from tests.unit.fake_lora import FakeLoraServer

FAST = Timing(interval_s=0.2, ttl_s=1.0, poll_interval_s=0.02, min_gap_s=0.01)
EXEC = ExecTiming(
    sync_s=0.05,
    warmup_s=0.3,
    drain_s=0.8,  # several publish intervals: the UNLOADING record must be seen
    appear_s=2.0,
    backoff_min_s=0.2,
    backoff_max_s=1.0,
    jitter=0,
)


@dataclass
class Recorder:
    """A ``RegistryWriter`` that keeps every record written."""

    records: list[ReplicaRecord] = field(default_factory=list)

    async def publish(self, rec: ReplicaRecord, ttl_s: float) -> None:
        self.records.append(rec)

    async def remove(self, replica_id: str) -> None:
        return None

    def states(self, model: str) -> list[ModelState | None]:
        """The model's published state in each record, repeats collapsed (None = absent)."""
        out: list[ModelState | None] = []
        for rec in self.records:
            state = next((m.state for m in rec.models if m.name == model), None)
            if not out or out[-1] != state:
                out.append(state)
        return out

    def version(self, model: str) -> str | None:
        return next((m.version for m in self.records[-1].models if m.name == model), None)


@dataclass
class Rig:
    srv: FakeLoraServer
    desired: MemoryDesired
    executor: Executor
    rec: Recorder
    name: str


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    with FakeLoraServer() as srv:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            name = f"vllm-{srv.port}"
            rec = Recorder()
            desired = MemoryDesired()
            handles: dict[str, ServerHandle] = {}
            ex = Executor(desired, lambda: handles, EXEC)
            target = Target(f"n/{name}", "n", "r", "z", "127.0.0.1", srv.port, ServerKind.VLLM)
            pub = ReplicaPublisher(
                target,
                VllmAdapter(srv.url, client, {}),
                NoGpu(),
                rec,
                FAST,
                overlay=lambda p: ex.overlay(name, p),
            )
            handles[name] = ServerHandle(
                VllmLoraLoader(srv.url, client, 5.0), lambda: pub.raw_probe
            )
            tasks = [
                asyncio.create_task(c) for c in (pub.probe_loop(), pub.publish_loop(), ex.run())
            ]
            try:
                yield Rig(srv, desired, ex, rec, name)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await ex.close()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_load_is_published_loading_then_warming_then_ready() -> None:
    async with rig() as r:
        r.srv.load_delay_s = 0.3
        r.desired.set("sql", server=r.name, version="v2", path="/adapters/sql")
        await until(lambda: r.rec.states("sql")[-1:] == [ModelState.READY])
        assert r.rec.states("sql") == [
            None,
            ModelState.LOADING,
            ModelState.WARMING,
            ModelState.READY,
        ]
        assert r.rec.version("sql") == "v2"
        assert len(r.srv.load_calls) == 1 and r.srv.loras == {"sql": "/adapters/sql"}


async def test_failed_loads_back_off_and_then_succeed() -> None:
    async with rig() as r:
        r.srv.fail_loads = 3
        r.desired.set("sql", server=r.name, path="/adapters/sql")
        await until(lambda: "sql" in r.srv.loras, within=5.0)
        starts = [t for t, _ in r.srv.load_calls]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert len(starts) == 4
        # 0.2, 0.4, 0.8 s apart (plus up to one sync period): never a tight loop.
        for gap, want in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert want - 0.02 <= gap <= want + 0.5, gaps
        assert r.executor.failures_total == 3
        await until(lambda: r.rec.states("sql")[-1:] == [ModelState.READY])
        assert ModelState.WARMING in r.rec.states("sql")
        failed = [rec.failures for rec in r.rec.records if rec.failures]
        assert failed, "no record showed the failed loads"
        assert {f.name for fs in failed for f in fs} == {"sql"}
        assert max(f.failures for fs in failed for f in fs) >= 2
        assert r.rec.records[-1].failures == ()  # loaded: the failure is gone


async def test_unload_drains_before_the_call() -> None:
    async with rig() as r:
        r.srv.loras["sql"] = "/adapters/sql"  # loaded before the agent started
        r.desired.set("sql", server=r.name, state="unloaded")
        await until(lambda: r.srv.loras == {})
        await until(lambda: r.rec.states("sql")[-1:] == [None])
        assert r.rec.states("sql") == [ModelState.READY, ModelState.UNLOADING, None]
        (t_unload, _), first_unloading = (
            r.srv.unload_calls[0],
            _first(r.rec, "sql", ModelState.UNLOADING),
        )
        assert t_unload - first_unloading >= EXEC.drain_s - 0.05


async def test_an_unreadable_desired_key_changes_nothing() -> None:
    async with rig() as r:
        r.desired.set("sql", server=r.name, path="/adapters/sql")
        await until(lambda: r.rec.states("sql")[-1:] == [ModelState.READY])
        r.desired.fail = ConnectionError("redis down")
        await asyncio.sleep(0.3)
        assert r.srv.loras == {"sql": "/adapters/sql"} and r.srv.unload_calls == []
        r.desired.fail = None
        r.desired.fields.clear()  # an emptied key unloads nothing either
        await asyncio.sleep(0.3)
        assert r.srv.loras == {"sql": "/adapters/sql"} and r.srv.unload_calls == []


async def test_a_model_lost_in_a_server_restart_is_loaded_again() -> None:
    async with rig() as r:
        r.desired.set("sql", server=r.name, path="/adapters/sql")
        await until(lambda: r.rec.states("sql")[-1:] == [ModelState.READY])
        r.srv.loras.clear()  # the server restarted without its adapters
        await until(lambda: len(r.srv.load_calls) == 2 and "sql" in r.srv.loras)
        await until(lambda: r.rec.states("sql")[-1:] == [ModelState.READY])


def _first(rec: Recorder, model: str, state: ModelState) -> float:
    for r in rec.records:
        if any(m.name == model and m.state is state for m in r.models):
            return _mono(r.timestamp)
    raise AssertionError(f"{model} never {state}")


def _mono(wall: float) -> float:
    """A record's wall-clock timestamp on the monotonic clock the fake server uses."""
    return wall - time.time() + time.monotonic()
