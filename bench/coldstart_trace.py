"""The cold-start benchmark's fleet and seeded request trace (pure, deterministic).

Models get a size (8-40 GB), a load time (15-60 s, growing with the size) and a 1 s wake,
and one of four demand shapes over compressed days of ``day_s`` seconds:

- ``steady``: Poisson the whole time (0.3-1 req/s);
- ``daily``: Poisson (0.2-0.6 req/s) only in a window that recurs at the same time of every
  day (60-150 s of each 600 s day);
- ``periodic``: a burst of 2-6 requests within 5 s every ``P`` s (90-200 s: beyond the fixed
  keep-alive, within the idle-time histogram), the phase jittered by a few seconds;
- ``rare``: Poisson with a mean gap of 300-1200 s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GB = 1 << 30
KINDS = ("steady", "daily", "periodic", "rare")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    kind: str
    mem_bytes: int
    load_s: float
    wake_s: float = 1.0


Trace = dict[str, list[float]]
"""Per model, its request arrival times (seconds from 0, sorted)."""


def make_models(n: int, seed: int) -> list[ModelSpec]:
    """``n`` models; the kinds in the proportion 3 steady : 6 daily : 5 periodic : 6 rare."""
    rng = random.Random(seed)
    mix = ["steady"] * 3 + ["daily"] * 6 + ["periodic"] * 5 + ["rare"] * 6
    out = []
    for i in range(n):
        gb = rng.randint(8, 40)
        load = round(15 + (gb - 8) / 32 * 45 * rng.uniform(0.8, 1.0), 1)
        out.append(ModelSpec(f"m{i:02d}-{mix[i % len(mix)]}", mix[i % len(mix)], gb * GB, load))
    return out


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    out: list[float] = []
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def make_trace(models: list[ModelSpec], end_s: float, day_s: float, seed: int) -> Trace:
    """Seeded arrivals for each model in ``[0, end_s)`` (see the module doc)."""
    out: Trace = {}
    for i, m in enumerate(models):
        rng = random.Random(seed * 1_000_003 + i)
        arrivals: list[float] = []
        if m.kind == "steady":
            arrivals = _poisson(rng, rng.uniform(0.3, 1.0), 0.0, end_s)
        elif m.kind == "daily":
            length = rng.uniform(60, 150)
            start = rng.uniform(0, day_s - length)
            rate = rng.uniform(0.2, 0.6)
            day = 0.0
            while day < end_s:
                arrivals += _poisson(rng, rate, day + start, min(end_s, day + start + length))
                day += day_s
        elif m.kind == "periodic":
            period = rng.uniform(90, 200)
            t = rng.uniform(0, period)
            while t < end_s:
                at = t + rng.uniform(-3, 3)
                arrivals += [at + rng.uniform(0, 5) for _ in range(rng.randint(2, 6))]
                t += period
        else:
            arrivals = _poisson(rng, 1 / rng.uniform(300, 1200), 0.0, end_s)
        out[m.name] = sorted(a for a in arrivals if 0 <= a < end_s)
    return out
