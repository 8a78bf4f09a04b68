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
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from controlplane.demo.bursts import BurstServed, burst, last_burst
from controlplane.demo.procs import ProcessGroup, free_port

SWAP_MODELS = ("phi", "gemma")
SWAP_GIB = 40
"""Each model's weights: two fit the 80 GB GPU's memory, not its 72 GB usable."""
SWAP_WAKE_MS = 800
SWAP_EVERY_S = 15.0
"""Seconds between bursts; the models alternate, so each is asked for every 30 s."""
SWAP_FIRST_S = 12.0
"""The first burst, after the fleet has settled."""


@dataclass
class SwapDemo:
    node: str
    served: deque[BurstServed] = field(default_factory=lambda: deque(maxlen=60))


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
    """Every ``SWAP_EVERY_S``, a burst of requests for the next of ``SWAP_MODELS`` in turn."""
    async with httpx.AsyncClient(timeout=150) as client:
        await asyncio.sleep(SWAP_FIRST_S)
        for model in itertools.cycle(SWAP_MODELS):
            if stop.is_set():
                return
            demo.served.extend(await burst(client, edge_port, model))
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
    first = f"first burst {SWAP_FIRST_S:g}-{SWAP_FIRST_S + SWAP_EVERY_S:g} s after start"
    for model in SWAP_MODELS:
        last = last_burst(demo.served, model)
        lines.append(f"  {model}: " + (f"last burst: {last}" if last else first))
    return lines
