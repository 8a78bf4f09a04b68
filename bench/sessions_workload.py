"""The session benchmark's workload: multi-turn chat sessions, their prompts, the fleet.

Plain data and seeded randomness, shared by the orchestrator (``bench.sessions``), the load
generator process (``bench.sessions_load``) and the tests: the same seed gives the same
sessions, turn for turn, character for character.

A session arrives (Poisson), belongs to one of ``GROUPS`` groups (an application: its
system prompt is shared by every session of the group), and has 3 to 20 turns. Each turn
sends the whole conversation so far (system prompt, every earlier user message and
assistant reply) plus a new user message, so the prompt grows turn by turn and each
prompt starts with the previous one: a replica that served the last turn has all of it in
its prefix cache. The assistant's reply that goes into the history is the workload's own
text of the turn's output length (the fake server's words are not read back), so the
prompts do not depend on which replica answered. Between turns the user thinks
(exponential, ``THINK_S`` mean). Text is random hex, 4 characters per token, so it hashes
as the fake server's tokens do (``controlplane.sim.prefix_cache``).

The fleet's numbers (``SessionShape``) model a mid-size model on a GPU that serves long
chats: prefill at ``prefill_tps`` 1,500 tokens/s per sequence, so a cache miss on a 2,000
token history costs ~1.3 s of prefill while a hit on all but the new message costs ~0.1 s;
a decode step of 40 ms. The outputs are short (median 24 tokens: the bench
runs on 2 CPU cores, and every token is an SSE event through the proxies), so per request a
miss's prefill is as long as the whole decode: with long chat histories that is where a
real GPU spends a cold turn's time to first token. The KV cache (32k tokens a replica)
holds a replica's share of the live sessions when they stay put, and a small part of all
of them when they are spread over every replica.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.routing_workload import Event, ServerShape, SizeDist
from controlplane.sim.prefix_cache import BLOCK_SIZE, CHARS_PER_TOKEN

GROUPS = 6
"""Applications: each has one system prompt shared by all of its sessions."""
SYSTEM = SizeDist(median=700, sigma=0.4, lo=300, hi=1400)
USER = SizeDist(median=60, sigma=0.7, lo=8, hi=400)
OUTPUT = SizeDist(median=24, sigma=0.6, lo=4, hi=96)
TURNS = (3, 20)
"""Fewest and most turns of a session (uniform)."""
THINK_S = 2.0
"""Mean think time between a reply and the next message (exponential)."""


def session_shape() -> ServerShape:
    """The fake servers' settings for sessions (see the module docstring)."""
    return ServerShape(
        max_running=4,
        ttft_ms=20.0,
        tpot_ms=40.0,
        prefill_tps=1500.0,
        batch_slowdown=0.05,
        kv_capacity_tokens=32768,
        max_model_len=16384,
        prefix_caching=True,
    )


SLOWED = Event(0.25, 3, {"speed": 0.35}, "gpu-3 becomes slow (speed 1.0 -> 0.35)")
REMOVED_AT, REMOVED = 0.5, 5
"""At half the window ``gpu-5`` (speed 1.0) leaves: its agent stops, its server later."""
DRAIN_S = 8.0
"""Seconds from the agent's stop (the record goes) to the server's (SIGTERM)."""


@dataclass(frozen=True, slots=True)
class Turn:
    user: int
    """Tokens of the new user message."""
    output: int
    """Tokens the assistant replies (``max_tokens``; its text joins the history)."""
    think: float
    """Seconds the user thinks after the reply, before the next turn (last: unused)."""


@dataclass(frozen=True, slots=True)
class Session:
    at: float
    """Arrival of its first turn, seconds after the run's start (warm-up included)."""
    sid: str
    group: int
    edge: int
    """Which edge (Envoy or router) all its turns go to."""
    turns: tuple[Turn, ...]


def text(seed: int, *key: object, tokens: int) -> str:
    """``tokens`` tokens of random hex, the same for the same seed and key."""
    rng = random.Random("/".join(map(str, (seed, *key))))
    return rng.randbytes(tokens * CHARS_PER_TOKEN // 2).hex()


def system_tokens(seed: int, group: int) -> int:
    return SYSTEM.draw(random.Random(f"{seed}/system-size/{group}"))


def system_prompt(seed: int, group: int) -> str:
    return text(seed, "system", group, tokens=system_tokens(seed, group))


def user_text(seed: int, s: Session, k: int) -> str:
    return text(seed, s.sid, k, "user", tokens=s.turns[k].user)


def reply_text(seed: int, s: Session, k: int) -> str:
    return text(seed, s.sid, k, "reply", tokens=s.turns[k].output)


def prompts(seed: int, s: Session) -> list[str]:
    """The prompt of every turn: the whole history so far plus the new message."""
    out, history = [], system_prompt(seed, s.group)
    for k in range(len(s.turns)):
        out.append(history + user_text(seed, s, k))
        history = out[-1] + reply_text(seed, s, k)
    return out


def prompt_tokens(seed: int, s: Session) -> list[int]:
    """Token counts of ``prompts`` without building the text."""
    out, n = [], system_tokens(seed, s.group)
    for t in s.turns:
        out.append(n + t.user)
        n = out[-1] + t.output
    return out


@dataclass(frozen=True, slots=True)
class SessionSchedule:
    """One run's sessions: Poisson arrivals over ``warmup + window (+ cool-down)``."""

    rate: float
    """Sessions per second."""
    warmup: float
    window: float
    seed: int
    sessions: tuple[Session, ...]
    cooldown: float = 0.0
    """After the window: sessions go on (the load stays) but no turn is due after it."""

    @property
    def end(self) -> float:
        return self.warmup + self.window + self.cooldown

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @staticmethod
    def load(path: Path) -> SessionSchedule:
        doc = json.loads(path.read_text())
        sessions = tuple(
            Session(
                at=d["at"],
                sid=d["sid"],
                group=d["group"],
                edge=d["edge"],
                turns=tuple(Turn(**t) for t in d["turns"]),
            )
            for d in doc.pop("sessions")
        )
        return SessionSchedule(sessions=sessions, **doc)


def mean_turns() -> float:
    return (TURNS[0] + TURNS[1]) / 2


def draw_session(
    rng: random.Random, at: float, sid: str, edge: int, *, think: bool = True
) -> Session:
    """One session's group and turns, from ``rng`` (no think time: ``think`` false)."""
    n = rng.randint(*TURNS)
    turns = tuple(
        Turn(USER.draw(rng), OUTPUT.draw(rng), round(rng.expovariate(1 / THINK_S), 3) * think)
        for _ in range(n)
    )
    return Session(at, sid, rng.randrange(GROUPS), edge, turns)


def make_sessions(
    rate: float, warmup: float, window: float, edges: int, seed: int, *, cooldown: float = 0.0
) -> SessionSchedule:
    """Sessions arriving at ``rate`` per second until ``warmup + window + cooldown``.

    Arrival times, shapes and edges come from their own streams, so the n-th session is the
    same at every rate (only its arrival moves)."""
    t_rng, s_rng, e_rng = (random.Random(f"{seed}/sessions/{k}") for k in ("t", "s", "e"))
    out: list[Session] = []
    t = t_rng.expovariate(rate)
    end = warmup + window + cooldown
    while t < end:
        out.append(draw_session(s_rng, t, f"s{len(out)}", e_rng.randrange(edges)))
        t += t_rng.expovariate(rate)
    return SessionSchedule(rate, warmup, window, seed, tuple(out), cooldown)


def oracle_hits(
    seed: int,
    sessions: dict[str, Session],
    sent: list[tuple[float, str, int]],
    start: float,
    stop: float,
) -> tuple[int, int]:
    """(cached, looked-up) prompt tokens of the turns ``sent`` in [start, stop) if every
    session stayed on one replica with a cache that never evicts: a turn finds its
    session's previous prompt cached, a first turn its group's system prompt once any
    earlier turn sent it. Counted as the fake server does: whole blocks, and never the
    prompt's last token. ``sent``: (send time, session id, turn index), any order."""
    seen: set[int] = set()
    hits = queries = 0
    for at, sid, k in sorted(sent):
        s = sessions[sid]
        sizes = prompt_tokens(seed, s)
        n = sizes[k]
        if k > 0:
            cached = sizes[k - 1]
        else:
            cached = system_tokens(seed, s.group) if s.group in seen else 0
            seen.add(s.group)
        blocks = min(cached // BLOCK_SIZE, (n - 1) // BLOCK_SIZE)
        if start <= at < stop:
            hits += blocks * BLOCK_SIZE
            queries += n
    return hits, queries


def session_rate(request_rate: float) -> float:
    """Sessions per second that make ``request_rate`` turns per second on average."""
    return request_rate / mean_turns()


def fraction(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan
