"""The cold-start benchmark's fleet and seeded request trace (pure, deterministic).

Models get a size (8-40 GB), a load time (15-60 s, growing with the size), a 1 s wake, a
popularity rank and a demand shape. Popularity is Zipf: the model of rank ``r`` (1 the most
popular) gets ``r**-s / sum(k**-s)`` of the fleet's ``total_rate`` requests per second, on
average over the run (``s`` 1.5 by default). The shape spreads that mean over compressed
days of ``day_s`` seconds:

- ``steady``: Poisson the whole time;
- ``daily``: Poisson only in a window that recurs at the same time of every day (60-150 s
  of each 600 s day), so the window's rate is the mean times ``day_s / window``;
- ``periodic``: a burst within 5 s every ``P`` s (90-200 s: beyond the fixed keep-alive,
  within the idle-time histogram), the phase jittered by a few seconds; a burst has at
  least one request, on average the mean times ``P``;
- ``tail``: Poisson, and the least popular ranks (no pattern to learn but the idle gaps).

The shapes come in the proportion 3 steady : 6 daily : 5 periodic : 6 tail. The steady
models are the most popular (chat-like traffic), then the daily and periodic ones mixed,
then the tail; within each band the order is seeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GB = 1 << 30
KINDS = ("steady", "daily", "periodic", "tail")
ZIPF_S = 1.5
TOTAL_RATE = 2.0
"""Requests per second over all models, on average."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    kind: str
    mem_bytes: int
    load_s: float
    wake_s: float = 1.0
    rate: float = 0.1
    """Mean requests per second over the run (its Zipf share of the total)."""
    rank: int = 1
    """Popularity rank, 1 the most popular."""


Trace = dict[str, list[float]]
"""Per model, its request arrival times (seconds from 0, sorted)."""


def zipf_shares(n: int, s: float) -> list[float]:
    """The share of requests of ranks 1..n (they sum to 1)."""
    w = [r**-s for r in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def make_models(
    n: int, seed: int, zipf_s: float = ZIPF_S, total_rate: float = TOTAL_RATE
) -> list[ModelSpec]:
    """``n`` models in name order, their shapes and Zipf ranks seeded (see the module doc)."""
    rng = random.Random(seed)
    mix = ["steady"] * 3 + ["daily"] * 6 + ["periodic"] * 5 + ["tail"] * 6
    kinds = [mix[i % len(mix)] for i in range(n)]
    steady = [i for i in range(n) if kinds[i] == "steady"]
    middle = [i for i in range(n) if kinds[i] in ("daily", "periodic")]
    tail = [i for i in range(n) if kinds[i] == "tail"]
    for band in (steady, middle, tail):
        rng.shuffle(band)
    rank = {i: r for r, i in enumerate(steady + middle + tail, start=1)}
    shares = zipf_shares(n, zipf_s)
    out = []
    for i in range(n):
        gb = rng.randint(8, 40)
        load = round(15 + (gb - 8) / 32 * 45 * rng.uniform(0.8, 1.0), 1)
        out.append(
            ModelSpec(
                f"m{i:02d}-{kinds[i]}",
                kinds[i],
                gb * GB,
                load,
                rate=total_rate * shares[rank[i] - 1],
                rank=rank[i],
            )
        )
    return out


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    out: list[float] = []
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def _count(rng: random.Random, mean: float) -> int:
    """At least one, ``max(1, mean)`` on average (1 + Poisson(mean - 1))."""
    return 1 + len(_poisson(rng, 1.0, 0.0, max(0.0, mean - 1.0)))


def make_trace(models: list[ModelSpec], end_s: float, day_s: float, seed: int) -> Trace:
    """Seeded arrivals for each model in ``[0, end_s)`` (see the module doc)."""
    out: Trace = {}
    for i, m in enumerate(models):
        rng = random.Random(seed * 1_000_003 + i)
        arrivals: list[float] = []
        if m.kind == "daily":
            length = rng.uniform(60, 150)
            start = rng.uniform(0, day_s - length)
            day = 0.0
            while day < end_s:
                window = (day + start, min(end_s, day + start + length))
                arrivals += _poisson(rng, m.rate * day_s / length, *window)
                day += day_s
        elif m.kind == "periodic":
            period = rng.uniform(90, 200)
            t = rng.uniform(0, period)
            while t < end_s:
                at = t + rng.uniform(-3, 3)
                arrivals += [at + rng.uniform(0, 5) for _ in range(_count(rng, m.rate * period))]
                t += period
        else:
            arrivals = _poisson(rng, m.rate, 0.0, end_s)
        out[m.name] = sorted(a for a in arrivals if 0 <= a < end_s)
    return out
