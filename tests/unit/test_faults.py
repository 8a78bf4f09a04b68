"""Fault latching, the operator's clear key, and the watcher that applies clears."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from controlplane.agent.gpus.faults import (
    FaultClearWatcher,
    FaultLatch,
    fault_clear_key,
    format_clear_stamp,
    parse_clear_stamp,
)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_key_and_stamp_format() -> None:
    assert fault_clear_key("gpu-a1") == "aixds:v1:fault-clear:gpu-a1"
    assert parse_clear_stamp(format_clear_stamp(1718000000.125)) == 1718000000.125
    assert parse_clear_stamp(b"1718000000.5") == 1718000000.5
    for bad in (None, "", "soon", "nan", "inf", "-1", b"\xff", 12.0, "1" * 100):
        assert parse_clear_stamp(bad) is None, bad


def test_latch_keeps_first_reason_until_cleared() -> None:
    wall = Clock(100.0)
    latch = FaultLatch(wall)
    assert latch.observe("g0", None) == (None, False)
    assert latch.observe("g0", "xid 79") == ("xid 79", True)
    wall.t = 101.0
    assert latch.observe("g0", None) == ("xid 79", False)
    assert latch.observe("g0", "ecc +1") == ("xid 79", False)
    assert latch.observe("g1", "remapped-row failure") == ("remapped-row failure", True)
    assert latch.clear(100.5) == ["g0"]  # g1 latched after the clear's time
    assert latch.observe("g0", None) == (None, False)
    assert set(latch.snapshot()) == {"g1"}


class Source:
    def __init__(self) -> None:
        self.clears: list[float] = []

    def clear_faults(self, before: float) -> list[str]:
        self.clears.append(before)
        return [f"gpu@{before}"]


class Store:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.gets = 0
        self.fail = False

    async def get(self, key: str) -> Any:
        self.gets += 1
        if self.fail:
            raise ConnectionError("redis down")
        return self.values.get(key)


async def test_watcher_applies_each_new_stamp_once() -> None:
    store, src, mono = Store(), Source(), Clock()
    w = FaultClearWatcher(store.get, "n1", [src, object()], every_s=1.0, clock=mono)
    assert await w.check() == []  # no key yet
    store.values[w.key] = "1700000000.0"
    assert await w.check() == []  # rate limited: not read again within every_s
    assert store.gets == 1
    mono.t = 1.0
    assert await w.check() == ["gpu@1700000000.0"]
    mono.t = 2.0
    assert await w.check() == []  # the same stamp is not applied twice
    store.values[w.key] = "1700000100.0"
    mono.t = 3.0
    assert await w.check() == ["gpu@1700000100.0"]
    store.values[w.key] = "1600000000.0"  # an older stamp (a restore) changes nothing
    mono.t = 4.0
    assert await w.check() == []
    assert src.clears == [1700000000.0, 1700000100.0]


async def test_watcher_survives_redis_errors_and_garbage(caplog: pytest.LogCaptureFixture) -> None:
    store, src, mono = Store(), Source(), Clock()
    w = FaultClearWatcher(store.get, "n1", [src], every_s=1.0, clock=mono)
    store.fail = True
    with caplog.at_level(logging.WARNING, logger="controlplane.agent.gpus.faults"):
        for i in range(3):
            mono.t = float(i)
            assert await w.check() == []
        store.fail = False
        store.values[w.key] = "yesterday"
        for i in range(3, 6):
            mono.t = float(i)
            assert await w.check() == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("redis down" in m for m in messages) == 1
    assert sum("'yesterday'" in m for m in messages) == 1
    store.values[w.key] = "5.0"
    mono.t = 10.0
    assert await w.check() == ["gpu@5.0"]


async def test_watcher_without_clearable_sources_reads_nothing() -> None:
    store = Store()
    w = FaultClearWatcher(store.get, "n1", [object()])
    assert await w.check() == []
    assert store.gets == 0


async def test_watcher_follows_changing_sources_and_clears_a_shared_one_once() -> None:
    store, mono = Store(), Clock()
    shared, own = Source(), Source()
    live: list[object] = []
    w = FaultClearWatcher(store.get, "n1", lambda: live, every_s=1.0, clock=mono)
    store.values[w.key] = "10.0"
    assert await w.check() == []  # no sources yet: nothing read
    assert store.gets == 0
    live += [shared, shared, own]  # two servers on the node-wide source, one of its own
    assert await w.check() == ["gpu@10.0", "gpu@10.0"]
    assert (shared.clears, own.clears) == ([10.0], [10.0])


async def test_watcher_run_keeps_checking() -> None:
    store, src = Store(), Source()
    w = FaultClearWatcher(store.get, "n1", [src], every_s=0.01)
    task = asyncio.create_task(w.run())
    try:
        store.values[w.key] = "1.0"
        for _ in range(200):
            if src.clears:
                break
            await asyncio.sleep(0.005)
        assert src.clears == [1.0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
