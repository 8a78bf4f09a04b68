"""The routing benchmark's load generator: a process of its own, so its CPU can be measured.

Two modes, both streaming ``/v1/completions`` (SSE) over plain asyncio sockets (a minimal
HTTP/1.1 client: one connection per request, ``Connection: close``; much cheaper per token
than a general-purpose client, so the generator stays far from CPU-bound):

- ``open``: an open-loop Poisson schedule (``routing_workload.Schedule``) sent to the edge
  Envoys. Latency is measured from each request's *scheduled* time, so a late generator
  cannot hide queueing (no coordinated omission). It exits once every measured request
  has ended; requests still running after the cool-down are cut (they are not measured).
- ``saturate``: closed loop straight to the model servers, ``per_replica`` requests in
  flight at each, for ``duration`` seconds: the fleet's capacity, in completions per
  second, under the same scripted events.

Results go to a JSON file: one row per request.

    python -m bench.routing_load open SCHEDULE.json OUT.json --start T --ports P1,P2,...
    python -m bench.routing_load saturate OUT.json --start T --duration S --ports ... \
        --per-replica N --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.routing_workload import MODEL, OUTPUT, PROMPT, Req, Schedule

REQUEST_TIMEOUT_S = 180.0


@dataclass(slots=True)
class Outcome:
    at: float
    """Scheduled offset (open) or send offset (saturate), seconds after start."""
    target: int
    prompt: int
    output: int
    status: int = 0
    ttft: float = -1.0
    e2e: float = -1.0
    replica: str = ""
    error: str = ""
    lag: float = 0.0
    """How late the generator sent it, seconds."""
    attempts: int = 1

    def row(self) -> list[object]:
        return [
            round(self.at, 6),
            self.target,
            self.prompt,
            self.output,
            self.status,
            round(self.ttft, 6),
            round(self.e2e, 6),
            self.replica,
            self.error,
            round(self.lag, 6),
            self.attempts,
        ]


ROW_FIELDS = (
    "at",
    "target",
    "prompt",
    "output",
    "status",
    "ttft",
    "e2e",
    "replica",
    "error",
    "lag",
    "attempts",
)


def _body(prompt: int, output: int) -> bytes:
    doc = {
        "model": MODEL,
        "prompt": "a" * (4 * prompt),  # the fake counts ~4 characters per token
        "max_tokens": output,
        "stream": True,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def fetch(
    port: int, o: Outcome, t_ref: float, body: bytes | None = None, headers: str = ""
) -> None:
    """One streamed completion; fills ``o``. Times are relative to ``t_ref`` (monotonic).

    ``body``: the request's JSON (default: ``o.prompt`` tokens of filler); ``headers``:
    extra header lines, each ending in CRLF."""
    loop = asyncio.get_running_loop()
    body = _body(o.prompt, o.output) if body is None else body
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}"
        "Connection: close\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + body)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed before the response headers")
                buf += chunk
            header, _, rest = buf.partition(b"\r\n\r\n")
            lines = header.decode("latin-1").split("\r\n")
            o.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "x-replica":
                    o.replica = v.strip()
                elif k == "x-envoy-attempt-count":
                    o.attempts = int(v.strip())
            if rest:
                o.ttft = loop.time() - t_ref
            tail = rest[-64:]
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if o.ttft < 0:
                    o.ttft = loop.time() - t_ref
                tail = (tail + chunk)[-64:]
            o.e2e = loop.time() - t_ref
            if o.status != 200:
                o.error = f"http {o.status}"
            elif b"[DONE]" not in tail:
                o.error = "stream cut"
    except TimeoutError:
        o.error = "timeout"
    except (OSError, ValueError, IndexError) as e:
        o.error = f"{type(e).__name__}: {e}"[:120]
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def sleep_until(loop: asyncio.AbstractEventLoop, t: float) -> None:
    d = t - loop.time()
    if d > 0:
        await asyncio.sleep(d)


def loop_start(start_wall: float, loop: asyncio.AbstractEventLoop) -> float:
    """The event-loop time that corresponds to wall-clock ``start_wall``."""
    return loop.time() + (start_wall - time.time())


async def run_open(sched: Schedule, ports: list[int], start_wall: float) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    t0 = loop_start(start_wall, loop)
    outcomes: list[Outcome] = []
    measured: list[asyncio.Task[None]] = []
    others: list[asyncio.Task[None]] = []

    async def one(r: Req, o: Outcome) -> None:
        await sleep_until(loop, t0 + r.at)
        o.lag = loop.time() - (t0 + r.at)
        await fetch(ports[r.edge % len(ports)], o, t0 + r.at)

    for r in sched.requests:
        o = Outcome(at=r.at, target=r.edge, prompt=r.prompt, output=r.output)
        outcomes.append(o)
        task = asyncio.create_task(one(r, o))
        (measured if sched.measured(r.at) else others).append(task)
    await asyncio.gather(*measured)
    end_of_load = t0 + (sched.requests[-1].at if sched.requests else 0.0)
    await sleep_until(loop, end_of_load)
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    return [o for o in outcomes if sched.measured(o.at)]


async def saturate_with(
    n_targets: int,
    start_wall: float,
    duration: float,
    per_target: int,
    step: Callable[[int, float], Awaitable[bool]],
) -> None:
    """``per_target`` workers per target, each awaiting ``step(target, t0)`` over and over
    from ``start_wall`` for ``duration`` seconds (a step that fails is followed by a short
    pause); what still runs then is cancelled."""
    loop = asyncio.get_running_loop()
    t0 = loop_start(start_wall, loop)

    async def worker(i: int) -> None:
        await sleep_until(loop, t0)
        while loop.time() < t0 + duration:
            if not await step(i, t0):
                await asyncio.sleep(0.05)  # a target gone: do not spin

    tasks = [asyncio.create_task(worker(i)) for i in range(n_targets) for _ in range(per_target)]
    await sleep_until(loop, t0 + duration)
    for t in tasks:
        t.cancel()  # requests still running are not counted as completions
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_saturate(
    ports: list[int], start_wall: float, duration: float, per_replica: int, seed: int
) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    outcomes: list[Outcome] = []

    async def step(i: int, t0: float) -> bool:
        o = Outcome(at=loop.time() - t0, target=i, prompt=PROMPT.draw(rng), output=OUTPUT.draw(rng))
        outcomes.append(o)
        await fetch(ports[i], o, t0 + o.at)
        return not o.error

    await saturate_with(len(ports), start_wall, duration, per_replica, step)
    return outcomes


def main(
    argv: list[str] | None = None,
    *,
    doc: str | None = __doc__,
    load: Callable[[Path], Any] = Schedule.load,
    open_loop: Callable[[Any, list[int], float], Awaitable[list[Outcome]]] = run_open,
    saturate: Callable[[list[int], float, float, int, int], Awaitable[list[Outcome]]] = (
        run_saturate
    ),
    fields: tuple[str, ...] = ROW_FIELDS,
) -> int:
    """The command line of a load generator: ``open`` runs ``open_loop`` on the schedule
    ``load`` reads, ``saturate`` runs ``saturate``; the rows go out with ``fields``."""
    ap = argparse.ArgumentParser(description=doc)
    sub = ap.add_subparsers(dest="mode", required=True)
    op = sub.add_parser("open")
    op.add_argument("schedule", type=Path)
    sa = sub.add_parser("saturate")
    sa.add_argument("--duration", type=float, required=True)
    sa.add_argument("--per-replica", type=int, required=True)
    sa.add_argument("--seed", type=int, default=0)
    for p in (op, sa):
        p.add_argument("out", type=Path)
        p.add_argument("--start", type=float, required=True, help="wall-clock start time")
        p.add_argument("--ports", required=True, help="comma-separated target ports")
    args = ap.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    if args.mode == "open":
        res = asyncio.run(open_loop(load(args.schedule), ports, args.start))
    else:
        res = asyncio.run(saturate(ports, args.start, args.duration, args.per_replica, args.seed))
    args.out.write_text(json.dumps({"fields": fields, "rows": [o.row() for o in res]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
