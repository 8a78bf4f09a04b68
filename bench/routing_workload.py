"""The routing benchmark's fleet and workload: replicas, scripted events, request schedule.

Everything here is plain data and seeded randomness, shared by the orchestrator
(``bench.routing``) and the load generator process (``bench.routing_load``), so every
policy sees exactly the same requests at the same offsets and the same events.

The fleet (8 simulated GPUs behind the fake vLLM server):

- speeds 1.5, 1.5, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6: two GPU generations faster and one
  slower than the reference;
- ``gpu-3`` becomes slow a quarter of the way through the measured window (its speed drops
  to 0.35: a degraded host; nothing in NVML shows it);
- ``gpu-1`` gets a noisy neighbour halfway through (``external_load`` 0.6: another tenant
  takes 60% of its GPU, which NVML utilization does show).

Requests: prompts and outputs are log-normal (long-tailed) and capped, as chat traffic is.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

MODEL = "llama"
VERSION = "v1"


@dataclass(frozen=True, slots=True)
class ServerShape:
    """Fake-server settings common to every replica (a vLLM-like engine, scaled down)."""

    max_running: int = 6
    ttft_ms: float = 40.0
    tpot_ms: float = 40.0
    prefill_tps: float = 4000.0
    batch_slowdown: float = 0.05
    kv_capacity_tokens: int = 8192
    max_model_len: int = 16384
    prefix_caching: bool = False
    """The routing load's prompts are all "aaaa..." and its model (routing_model) has no
    prefix cache: with caching on, every prompt would be a cache hit."""

    def args(self) -> list[str]:
        return [
            "--max-running",
            str(self.max_running),
            "--ttft-ms",
            str(self.ttft_ms),
            "--tpot-ms",
            str(self.tpot_ms),
            "--prefill-tps",
            str(self.prefill_tps),
            "--batch-slowdown",
            str(self.batch_slowdown),
            "--kv-capacity-tokens",
            str(self.kv_capacity_tokens),
            "--max-model-len",
            str(self.max_model_len),
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
        ]


SPEEDS: tuple[float, ...] = (1.5, 1.5, 1.0, 1.0, 1.0, 1.0, 0.6, 0.6)
"""Speed factor of each replica, ``gpu-0`` .. ``gpu-7``."""


@dataclass(frozen=True, slots=True)
class Event:
    """A ``POST /control`` to one replica at ``at`` (fraction of the measured window)."""

    at: float
    replica: int
    control: dict[str, float]
    what: str


EVENTS: tuple[Event, ...] = (
    Event(0.25, 3, {"speed": 0.35}, "gpu-3 becomes slow (speed 1.0 -> 0.35, invisible to NVML)"),
    Event(0.5, 1, {"external_load": 0.6}, "gpu-1 gets a noisy neighbour (60% of its GPU)"),
)


def reset_controls() -> list[dict[str, float]]:
    """What undoes every event, per replica (sent before each run)."""
    return [{"speed": s, "external_load": 0.0} for s in SPEEDS]


@dataclass(frozen=True, slots=True)
class SizeDist:
    """Log-normal token counts, clipped: median * exp(sigma * N(0, 1))."""

    median: float
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: random.Random) -> int:
        v = self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return int(min(self.hi, max(self.lo, round(v))))


PROMPT = SizeDist(median=400, sigma=1.0, lo=16, hi=6000)
OUTPUT = SizeDist(median=20, sigma=1.0, lo=1, hi=160)


@dataclass(frozen=True, slots=True)
class Req:
    at: float
    """Seconds after the run's start (warm-up included)."""
    prompt: int
    output: int
    edge: int
    """Which of the edge Envoys it goes to."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One run's open-loop workload: Poisson arrivals over ``warmup + window`` seconds."""

    rate: float
    warmup: float
    window: float
    seed: int
    requests: tuple[Req, ...]

    def measured(self, at: float) -> bool:
        return self.warmup <= at < self.warmup + self.window

    def dump(self, path: Path) -> None:
        doc = asdict(self)
        doc["requests"] = [[r.at, r.prompt, r.output, r.edge] for r in self.requests]
        path.write_text(json.dumps(doc))

    @staticmethod
    def load(path: Path) -> Schedule:
        doc = json.loads(path.read_text())
        reqs = tuple(Req(a, p, o, e) for a, p, o, e in doc.pop("requests"))
        return Schedule(requests=reqs, **doc)


def make_schedule(
    rate: float, warmup: float, window: float, edges: int, seed: int, *, cooldown: float = 0.0
) -> Schedule:
    """Poisson arrivals at ``rate``/s for ``warmup + window + cooldown`` seconds.

    The cool-down keeps the load on while the last measured requests finish, so they are
    not served by an emptying fleet. Sizes and edges come from their own random streams,
    so the n-th request is the same at every rate.
    """
    t_rng, s_rng, e_rng = (random.Random(f"{seed}/{k}") for k in ("t", "s", "e"))
    reqs: list[Req] = []
    t = t_rng.expovariate(rate)
    end = warmup + window + cooldown
    while t < end:
        reqs.append(Req(t, PROMPT.draw(s_rng), OUTPUT.draw(s_rng), e_rng.randrange(edges)))
        t += t_rng.expovariate(rate)
    return Schedule(rate=rate, warmup=warmup, window=window, seed=seed, requests=tuple(reqs))
