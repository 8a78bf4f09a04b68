"""Small asyncio helpers the agent's loops share."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, within_s: float) -> bool:
    """Wait for ``event`` at most ``within_s`` seconds; ``True`` if it was set.

    Unlike ``wait_for`` + ``suppress(TimeoutError)``, a cancellation that races with the
    timeout is never swallowed (Python 3.11's ``wait_for`` turns it into TimeoutError):
    a loop built on this always stops when its task is cancelled.
    """
    try:
        async with asyncio.timeout(max(0.0, within_s)):
            await event.wait()
    except TimeoutError:
        return False
    return True


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    redis-py (8.1 here) can finish a command normally although its task was cancelled
    while the command ran: the request then shows only in ``Task.cancelling()``. Every
    agent loop that calls Redis checks this after each call, so it still stops.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
