"""Bursts of requests for one model through an edge Envoy, and how the last one went.

The demo's cold-start model and its shared-GPU models are asked for in bursts; each
request is recorded with the ``x-aixds-waited-ms`` the activator put on it, so the dashboard
can say whether the burst found its model awake or was held while it loaded or woke.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

BURST = 3
"""Requests in one burst, sent at once."""


@dataclass(frozen=True, slots=True)
class BurstServed:
    at: float
    """Monotonic time the request was sent."""
    model: str
    took: float
    status: int
    """The HTTP status; 0: the request failed without one."""
    waited_ms: str
    """``x-aixds-waited-ms``: how long the activator held it ("" if it was not held)."""


async def burst(client: httpx.AsyncClient, edge_port: int, model: str) -> list[BurstServed]:
    """``BURST`` chat requests for ``model`` through the edge on ``edge_port``, at once."""
    url = f"http://127.0.0.1:{edge_port}/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

    async def one() -> BurstServed:
        t = time.monotonic()
        try:
            r = await client.post(url, json=body)
        except httpx.HTTPError:
            return BurstServed(t, model, time.monotonic() - t, 0, "")
        waited = r.headers.get("x-aixds-waited-ms", "")
        return BurstServed(t, model, time.monotonic() - t, r.status_code, waited)

    return list(await asyncio.gather(*(one() for _ in range(BURST))))


def last_burst(served: Iterable[BurstServed], model: str) -> str | None:
    """How ``model``'s last burst went (``None``: none yet): its requests, the longest
    took, how long the activator held them ("warm": not held), and their statuses."""
    last = [s for s in served if s.model == model][-BURST:]
    if not last:
        return None
    took = max(s.took for s in last)
    held = [int(s.waited_ms) for s in last if s.waited_ms.isdigit()]
    how = f"held {max(held) / 1000:.1f} s by the activator" if held else "warm"
    codes = ",".join(str(s.status) for s in last)
    return f"{len(last)} requests, {took:.1f} s ({how}), status {codes}"
