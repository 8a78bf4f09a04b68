"""The shared reconnect loop: backoff that grows and resets, and cancellation that wins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from controlplane.runtime.reconnect import reconnect_forever


class Script:
    """A session that plays ``outcomes`` in order: an exception to raise, or None to return."""

    def __init__(self, outcomes: Sequence[Exception | None]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.outcomes:
            raise asyncio.CancelledError  # end of script: stop the loop the way shutdown does
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, s: float) -> None:
        self.waits.append(s)


async def test_backoff_doubles_to_the_cap_and_resets_after_a_good_session() -> None:
    err = ConnectionError("down")
    session = Script([err] * 6 + [None] + [err] * 2)
    downs: list[Exception] = []
    sleeps = Sleeps()
    with pytest.raises(asyncio.CancelledError):
        await reconnect_forever(session, downs.append, max_backoff_s=1.0, sleep=sleeps)
    assert sleeps.waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 0.05, 0.1]
    assert downs == [err] * 8
    assert session.calls == 10


async def test_a_session_that_had_connected_is_retried_at_once() -> None:
    err = ConnectionError("down")
    up = {"now": False}

    class Connects(Script):
        async def __call__(self) -> None:
            up["now"] = self.calls in (4, 5)  # the 5th and 6th sessions connect, then fail
            await super().__call__()

    def on_down(e: Exception) -> None:
        up["now"] = False

    sleeps = Sleeps()
    with pytest.raises(asyncio.CancelledError):
        await reconnect_forever(
            Connects([err] * 7), on_down, max_backoff_s=1.0, was_up=lambda: up["now"], sleep=sleeps
        )
    assert sleeps.waits == [0.05, 0.1, 0.2, 0.4, 0.05, 0.05, 0.1]


async def test_cancelling_the_task_propagates_even_when_the_session_hides_it() -> None:
    entered = asyncio.Event()
    downs: list[Exception] = []

    async def session() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("closed while reading") from None  # what redis-py does

    task = asyncio.create_task(reconnect_forever(session, downs.append, max_backoff_s=1.0))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert downs == []  # not mistaken for an outage


async def test_cancelled_during_the_backoff_sleep() -> None:
    downs: list[Exception] = []
    third = asyncio.Event()

    def on_down(e: Exception) -> None:
        downs.append(e)
        if len(downs) == 3:
            third.set()

    async def session() -> None:
        raise ConnectionError("refused")

    task = asyncio.create_task(reconnect_forever(session, on_down, max_backoff_s=60.0))
    await asyncio.wait_for(third.wait(), 5.0)  # now asleep for 0.2 s before the fourth try
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(downs) == 3
