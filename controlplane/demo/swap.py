"""The demo's shared GPU: two sleep-mode servers take turns on one GPU.

Node ``<region>-gpu-swap`` runs two fake vLLM servers (``--enable-sleep-mode``), one model
each (``phi`` and ``gemma``, 40 GB of weights), on one 80 GB GPU (same ``--gpu-uuid``), under
one agent. Placement counts that GPU once (72 GB usable), so only one of them fits awake;
the other sleeps (weights in host memory). Their request bursts alternate: each burst finds
its model asleep, the activator holds it while placement puts the other to sleep and wakes
this one (a second, not a load), and the dashboard shows who is awake and how long the last
burst of each waited.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from controlplane.demo.procs import ProcessGroup, free_port

SWAP_MODELS = ("phi", "gemma")
SWAP_GIB = 40
"""Each model's weights: two fit the 80 GB GPU's memory, not its 72 GB usable."""
SWAP_WAKE_MS = 800
SWAP_EVERY_S = 15.0
"""Seconds between bursts; the models alternate, so each is asked for every 30 s."""
SWAP_FIRST_S = 12.0
"""The first burst, after the fleet has settled."""


@dataclass(frozen=True, slots=True)
class SwapServed:
    at: float
    """Monotonic time the request was sent."""
    model: str
    took: float
    status: int
    waited_ms: str
    """``x-aixds-waited-ms``: how long the activator held it ("" if it was not held)."""


@dataclass
class SwapDemo:
    node: str
    served: deque[SwapServed] = field(default_factory=lambda: deque(maxlen=60))


def start_swap_node(group: ProcessGroup, region: str, redis_url: str) -> SwapDemo:
    """Two sleep-mode fake servers on one GPU and their agent (see the module doc)."""
    node = f"{region}-gpu-swap"
    servers = []
    for model in SWAP_MODELS:
        port = free_port()
        group.fake_llm(
            f"llm-{node}-{model}",
            port,
            model,
            f"{node}/vllm-{port}",
            "--enable-sleep-mode",
            "--wake-ms",
            str(SWAP_WAKE_MS),
            "--weights-gib",
            str(SWAP_GIB),
            "--gpu-mem-gib",
            "80",
            "--gpu-uuid",
            f"GPU-{node}",
        )
        servers += ["--server", f"vllm=http://127.0.0.1:{port}"]
    group.agent(node, redis_url, region, f"{region}-a", *servers, "--drain", "1")
    return SwapDemo(node)


async def swap_bursts(edge_port: int, demo: SwapDemo, stop: asyncio.Event) -> None:
    """Every ``SWAP_EVERY_S``, three requests for the next of ``SWAP_MODELS`` in turn."""
    url = f"http://127.0.0.1:{edge_port}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=150) as client:

        async def one(model: str) -> None:
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8,
            }
            t = time.monotonic()
            try:
                r = await client.post(url, json=body)
                waited = r.headers.get("x-aixds-waited-ms", "")
                demo.served.append(
                    SwapServed(t, model, time.monotonic() - t, r.status_code, waited)
                )
            except httpx.HTTPError:
                demo.served.append(SwapServed(t, model, time.monotonic() - t, 0, ""))

        await asyncio.sleep(SWAP_FIRST_S)
        turn = 0
        while not stop.is_set():
            model = SWAP_MODELS[turn % len(SWAP_MODELS)]
            turn += 1
            await asyncio.gather(one(model), one(model), one(model))
            await asyncio.sleep(SWAP_EVERY_S)


def swap_lines(fleet: dict[str, Any], demo: SwapDemo) -> list[str]:
    """The dashboard's lines: each model's state on the shared GPU and its last burst."""
    states = {}
    for rid, rec in fleet.items():
        if rid.startswith(demo.node + "/"):
            for m in rec.get("models", ()):
                states[m["name"]] = m["state"]
    now_ = ", ".join(f"{m} {states.get(m, 'not seen yet')}" for m in SWAP_MODELS)
    lines = [
        f"shared GPU: {' and '.join(SWAP_MODELS)} ({SWAP_GIB} GB each, a server each) on one"
        f" 80 GB GPU of {demo.node}, bursts alternate every {SWAP_EVERY_S:g} s: {now_}"
    ]
    for model in SWAP_MODELS:
        burst = [s for s in demo.served if s.model == model][-3:]
        if not burst:
            first = f"{SWAP_FIRST_S:g}-{SWAP_FIRST_S + SWAP_EVERY_S:g}"
            lines.append(f"  {model}: first burst {first} s after start")
            continue
        held = [int(s.waited_ms) for s in burst if s.waited_ms.isdigit()]
        how = f"held {max(held) / 1000:.1f} s by the activator" if held else "it was awake"
        codes = ",".join(str(s.status) for s in burst)
        took = max(s.took for s in burst)
        lines.append(f"  {model}: last burst {took:.1f} s ({how}), status {codes}")
    return lines
