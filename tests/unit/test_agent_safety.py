"""Agent safety pieces: only its own node's records, bounded memory, cancellable loops."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from controlplane.agent.aio import raise_if_cancelled, wait_event
from controlplane.agent.publisher import OwnNodeWriter
from controlplane.agent.servers.scrape import MAX_BODY_BYTES, BodyTooLarge, Notes, Reply, fetch
from controlplane.fleet.model import ReplicaRecord, ServerKind
from controlplane.fleet.store import MemoryRegistry


def record(rid: str, node: str) -> ReplicaRecord:
    return ReplicaRecord(rid, node, "r", "z", "127.0.0.1", 1, ServerKind.VLLM, (), timestamp=1.0)


async def test_own_node_writer_refuses_other_nodes() -> None:
    reg = MemoryRegistry(time.monotonic)
    w = OwnNodeWriter(reg, "n1")
    await w.publish(record("n1/vllm-1", "n1"), 3.0)
    for bad in (record("n2/vllm-1", "n2"), record("n2/vllm-1", "n1"), record("n1/vllm-1", "n2")):
        with pytest.raises(ValueError, match="not node n1's"):
            await w.publish(bad, 3.0)
    with pytest.raises(ValueError):
        await w.remove("n10/vllm-1")  # a prefix of another node's name is not enough
    assert [e.replica_id for e in await reg.read_all()] == ["n1/vllm-1"]


def test_notes_log_once_per_change_and_forget_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    notes = Notes("here", limit=3)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            notes.say("a", "broken")
        notes.say("a", "")
        notes.say("a", "broken")
        for i in range(10):
            notes.say(f"replica-{i}", "gone")
    assert sum(r.message == "here broken" for r in caplog.records) == 2
    assert len(notes._said) <= 3


async def test_an_oversized_answer_is_refused() -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=big))
    )
    assert isinstance(await fetch(client, "GET", "http://h/metrics"), BodyTooLarge)
    ok = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"ok"))
    )
    assert await fetch(ok, "GET", "http://h/") == Reply(200, b"ok")


async def test_wait_event() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    ev.set()
    assert await wait_event(ev, 1.0) is True


async def test_a_swallowed_cancel_still_stops_a_loop() -> None:
    async def swallowing_call() -> None:  # like redis-py 8.1 under an ill-timed cancel
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return

    async def loop() -> None:
        while True:
            await swallowing_call()
            raise_if_cancelled()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1.0)
    assert task.cancelled()
