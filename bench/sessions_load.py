"""The session benchmark's load generator (a process of its own, so its CPU is measured).

Uses ``routing_load.fetch`` (streamed ``/v1/completions`` over plain asyncio sockets).
Every turn carries its session key twice: the ``x-session-id`` header and the body's
``user``. Two modes:

- ``open``: the sessions of a ``SessionSchedule`` arrive at their times (open loop); within
  a session each turn is sent when the user has read the last reply and thought
  (closed loop, as a person chats). A turn's latency is measured from when it was due, so
  a late generator cannot hide queueing. Sessions send no turn due after the schedule's
  end (warm-up + window + cool-down); the generator exits when the last one has ended.
- ``saturate``: ``per_replica`` sessions at a time straight to each model server, turn
  after turn with no think time, new sessions as old ones end, for ``duration`` seconds:
  the fleet's capacity for this workload when no session ever moves.

Rows as ``routing_load``'s plus the session and the turn index.

    python -m bench.sessions_load open SCHEDULE.json OUT.json --start T --ports P1,P2,...
    python -m bench.sessions_load saturate OUT.json --start T --duration S --ports ... \
        --per-replica N --seed 7
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from dataclasses import dataclass

from bench import routing_load
from bench.routing_load import (
    ROW_FIELDS,
    Outcome,
    fetch,
    loop_start,
    saturate_with,
    sleep_until,
)
from bench.routing_workload import MODEL
from bench.sessions_workload import Session, SessionSchedule, draw_session, prompts
from controlplane.sim.prefix_cache import CHARS_PER_TOKEN

SESSION_FIELDS = (*ROW_FIELDS, "session", "turn")


@dataclass(slots=True)
class TurnOutcome(Outcome):
    session: str = ""
    turn: int = 0

    def row(self) -> list[object]:
        return [*Outcome.row(self), self.session, self.turn]


def request(s: Session, prompt: str, max_tokens: int) -> tuple[bytes, str]:
    """The body and extra header lines of one turn of ``s``."""
    doc = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    doc["user"] = s.sid
    body = json.dumps(doc, separators=(",", ":")).encode()
    return body, f"x-session-id: {s.sid}\r\n"


async def play(
    seed: int, s: Session, port: int, t0: float, first: float, end: float, out: list[TurnOutcome]
) -> bool:
    """Every turn of ``s`` to ``port``: the first due at ``t0 + first``, each next one a
    think time after the last reply; none due at ``t0 + end`` or later. False when the
    last turn sent failed."""
    loop = asyncio.get_running_loop()
    due = first
    ok = True
    for k, (turn, prompt) in enumerate(zip(s.turns, prompts(seed, s), strict=True)):
        if due >= end:
            break
        tokens = len(prompt) // CHARS_PER_TOKEN
        o = TurnOutcome(at=due, target=s.edge, prompt=tokens, output=turn.output)
        o.session, o.turn = s.sid, k
        out.append(o)
        await sleep_until(loop, t0 + due)
        o.lag = loop.time() - (t0 + due)
        body, headers = request(s, prompt, turn.output)
        await fetch(port, o, t0 + due, body, headers)
        due = loop.time() - t0 + turn.think
        ok = not o.error
    return ok


async def run_open(sched: SessionSchedule, ports: list[int], start_wall: float) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    t0 = loop_start(start_wall, loop)
    end = sched.end
    out: list[TurnOutcome] = []
    tasks = [
        asyncio.create_task(play(sched.seed, s, ports[s.edge % len(ports)], t0, s.at, end, out))
        for s in sched.sessions
    ]
    await asyncio.gather(*tasks)
    return list(out)


async def run_saturate(
    ports: list[int], start_wall: float, duration: float, per_replica: int, seed: int
) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    out: list[TurnOutcome] = []

    async def step(i: int, t0: float) -> bool:
        s = draw_session(rng, 0.0, f"c{i}-{len(out)}", i, think=False)
        return await play(seed, s, ports[i], t0, loop.time() - t0, duration, out)

    await saturate_with(len(ports), start_wall, duration, per_replica, step)
    return list(out)


def main(argv: list[str] | None = None) -> int:
    return routing_load.main(
        argv,
        doc=__doc__,
        load=SessionSchedule.load,
        open_loop=run_open,
        saturate=run_saturate,
        fields=SESSION_FIELDS,
    )


if __name__ == "__main__":
    sys.exit(main())
