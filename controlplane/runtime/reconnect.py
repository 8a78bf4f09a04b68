"""Reconnect with exponential backoff, shared by the Redis watchers.

A session runs until its connection fails (by raising); the loop then reports the
failure, sleeps, and starts a new one. Cancellation always propagates, including the case
where redis-py turns a cancellation into a connection error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

INITIAL_BACKOFF_S = 0.05

Sleep = Callable[[float], Awaitable[None]]


def reraise_if_cancelling() -> None:
    """redis-py may turn a cancellation into a connection error; do not lose it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def reconnect_forever(
    session: Callable[[], Awaitable[None]],
    on_down: Callable[[Exception], None],
    *,
    max_backoff_s: float,
    was_up: Callable[[], bool] = lambda: False,
    sleep: Sleep = asyncio.sleep,
) -> NoReturn:
    """Run ``session`` again and again until cancelled.

    When it raises, ``on_down(error)`` is called and the next attempt waits: 0.05 s,
    doubling up to ``max_backoff_s``. The wait starts again from 0.05 s after a session
    that returned, or that failed after it had connected (``was_up()`` true just before
    ``on_down``): a connection lost after an hour of service is retried at once.
    """
    backoff = INITIAL_BACKOFF_S
    while True:
        try:
            await session()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            reraise_if_cancelling()
            if was_up():
                backoff = INITIAL_BACKOFF_S
            on_down(e)
            await sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)
            continue
        backoff = INITIAL_BACKOFF_S
