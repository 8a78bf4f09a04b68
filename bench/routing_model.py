"""A discrete-event model of the routing benchmark, for trying weight policies in seconds.

It models what ``bench.routing`` runs for real, on simulated time: the fake server's engine
(FIFO queue, ``max_running``, KV admission and preemption, prefill, batched decode steps
with batch slowdown, speed), the scripted events, agents that poll every 0.25 s and publish
on a meaningful change or every second, the control plane turning records into weights
with ``controlplane.decide.weights``, and 4 edge Envoys, each with its own view of the
requests it has in flight: ROUND_ROBIN, LEAST_REQUEST (power of two choices with equal
weights; with unequal weights the EDF schedule on ``weight / (active + 1)``, as Envoy does).

It is a model, not a measurement: use it to explore, and ``bench.routing`` to conclude.

    python -m bench.routing_model                    # 80% load, every policy, 5 seeds
    python -m bench.routing_model --loads 0.6,0.8,0.95 --seeds 3
    python -m bench.routing_model --policies aixds --set SPEED_EXP=2 --set LOAD_STEP=8
"""

from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.routing_workload import EVENTS, OUTPUT, PROMPT, SPEEDS, ServerShape
from controlplane.agent.publisher import load_changed
from controlplane.agent.servers.speed import DecodeSpeed
from controlplane.decide import weights as W
from controlplane.fleet.model import (
    GpuStats,
    LoadStats,
    ModelInfo,
    ModelState,
    ReplicaRecord,
    ServerKind,
)

EDGES = 4
POLL_S = 0.25
BEAT_S = 1.0
PUSH_DELAY_S = 0.01
"""Agent publish -> Redis -> control plane -> Envoy has the new weights (measured ~5-15 ms)."""


@dataclass(eq=False)
class Seq:
    prompt: int
    max_tokens: int
    arrived: float
    edge: int = 0
    host: int = 0
    generated: int = 0
    first_token: float = -1.0
    done: float = -1.0

    @property
    def kv(self) -> int:
        return self.prompt + self.generated


class Engine:
    """The fake server's engine (``controlplane.sim.engine``), on simulated time."""

    def __init__(self, sim: Sim, index: int, shape: ServerShape, speed: float) -> None:
        self.sim, self.i, self.k = sim, index, shape
        self.speed = speed
        self.external = 0.0
        self.waiting: collections.deque[Seq] = collections.deque()
        self.running: dict[Seq, None] = {}
        self.decoding: dict[Seq, None] = {}
        self.kv_used = 0
        self.step_at: float | None = None
        self.step_s = 0.0
        self.tokens = 0
        self.busy_since: float | None = None

    def eff(self) -> float:
        return self.speed * (1.0 - self.external)

    def submit(self, s: Seq) -> None:
        self.waiting.append(s)
        self.admit()

    def admit(self) -> None:
        k = self.k
        while self.waiting and len(self.running) < k.max_running:
            head = self.waiting[0]
            if self.running and self.kv_used + head.kv + 1 > k.kv_capacity_tokens:
                return
            self.waiting.popleft()
            self.running[head] = None
            self.kv_used += head.kv
            d = (k.ttft_ms / 1000 + head.kv / k.prefill_tps) / self.eff()
            self.sim.at(self.sim.now + d, self.prefilled, head)

    def prefilled(self, s: Seq) -> None:
        if s not in self.running:
            return  # preempted during prefill
        self.decoding[s] = None
        self.emit(s)
        self.schedule_step()

    def schedule_step(self) -> None:
        if self.step_at is None and self.decoding:
            k = self.k
            self.step_s = (
                k.tpot_ms / 1000 * (1 + k.batch_slowdown * (len(self.decoding) - 1)) / self.eff()
            )
            self.step_at = self.sim.now + self.step_s
            self.sim.at(self.step_at, self.step)

    def step(self) -> None:
        self.step_at = None
        due = list(self.decoding)
        cap = self.k.kv_capacity_tokens
        while due and self.kv_used + len(due) > cap and len(self.running) > 1:
            victim = next(reversed(self.running))
            del self.running[victim]
            self.decoding.pop(victim, None)
            self.kv_used -= victim.kv
            self.waiting.appendleft(victim)
            if victim in due:
                due.remove(victim)
        for s in due:
            self.emit(s)
        self.schedule_step()

    def emit(self, s: Seq) -> None:
        s.generated += 1
        self.kv_used += 1
        self.tokens += 1
        if s.first_token < 0:
            s.first_token = self.sim.now
        if s.generated >= s.max_tokens:
            del self.running[s]
            self.decoding.pop(s, None)
            self.kv_used -= s.kv
            s.done = self.sim.now
            self.sim.finished(s)
            self.admit()

    def load(self) -> LoadStats:
        return LoadStats(
            queue_waiting=len(self.waiting),
            running=len(self.running),
            kv_cache_usage=min(1.0, self.kv_used / self.k.kv_capacity_tokens),
        )


@dataclass
class Agent:
    """One node agent: polls its server, publishes on change or on the beat."""

    engine: Engine
    published: LoadStats | None = None
    published_at: float = -1e9
    estimator: DecodeSpeed = field(default_factory=DecodeSpeed)
    speed: float = 1.0


Policy = Callable[[list[ReplicaRecord]], list[int]]


def aixds_policy(recs: list[ReplicaRecord]) -> list[int]:
    return W.weights([W.raw_score(r) for r in recs])


class Sim:
    def __init__(
        self,
        policy: str,
        rate: float,
        warmup: float,
        window: float,
        seed: int,
        shape: ServerShape,
        *,
        weight_policy: Policy = aixds_policy,
        estimate_speed: bool = False,
        coalesce_s: float = 0.002,
        speed_tau_s: float = 2.0,
    ) -> None:
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., None], tuple[object, ...]]] = []
        self._n = itertools.count()
        self.policy = policy
        self.rng = random.Random(seed)
        self.engines = [Engine(self, i, shape, s) for i, s in enumerate(SPEEDS)]
        self.agents = [Agent(e, estimator=DecodeSpeed(tau_s=speed_tau_s)) for e in self.engines]
        self.records: list[ReplicaRecord] = [self._record(a) for a in self.agents]
        self.weight_policy = weight_policy
        self.estimate_speed = estimate_speed
        self.coalesce_s = coalesce_s
        self._decide_pending = False
        n = len(self.engines)
        self.weights = [1] * n
        self.edge_weights = [[1] * n for _ in range(EDGES)]
        self.active = [[0] * n for _ in range(EDGES)]
        self.rr = [self.rng.randrange(n) for _ in range(EDGES)]
        self.edf: list[list[tuple[float, int, int]]] = [[] for _ in range(EDGES)]
        self.edf_now = [0.0] * EDGES
        self.pushes = 0
        self.publishes = 0
        self.done: list[Seq] = []
        self.warmup, self.window = warmup, window
        self.rate = rate
        self.seed = seed
        self.shape = shape

    # -- event loop -------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[..., None], *args: object) -> None:
        heapq.heappush(self._q, (t, next(self._n), fn, args))

    def run(self) -> list[Seq]:
        t_rng = random.Random(f"{self.seed}/t")
        s_rng = random.Random(f"{self.seed}/s")
        e_rng = random.Random(f"{self.seed}/e")
        end = self.warmup + self.window
        t = t_rng.expovariate(self.rate)
        while t < end * 1.25:
            s = Seq(PROMPT.draw(s_rng), OUTPUT.draw(s_rng), t, edge=e_rng.randrange(EDGES))
            self.at(t, self.arrive, s)
            t += t_rng.expovariate(self.rate)
        for ev in EVENTS:
            self.at(self.warmup + ev.at * self.window, self.event, ev.replica, ev.control)
        if self.policy == "aixds":
            for a in self.agents:
                self.at(self.rng.random() * POLL_S, self.poll, a)
            self.set_weights()
        while self._q:
            t, _, fn, args = heapq.heappop(self._q)
            if t > end * 1.25 + 120:
                break
            self.now = t
            fn(*args)
        return [s for s in self.done if self.warmup <= s.arrived < end]

    def event(self, i: int, control: dict[str, float]) -> None:
        e = self.engines[i]
        e.speed = control.get("speed", e.speed)
        e.external = control.get("external_load", e.external)

    # -- routing ----------------------------------------------------------------------------
    def arrive(self, s: Seq) -> None:
        h = self.pick(s.edge)
        s.host = h
        self.active[s.edge][h] += 1
        self.engines[h].submit(s)

    def finished(self, s: Seq) -> None:
        self.active[s.edge][s.host] -= 1
        self.done.append(s)

    def pick(self, e: int) -> int:
        n = len(self.engines)
        if self.policy == "ROUND_ROBIN":
            self.rr[e] = (self.rr[e] + 1) % n
            return self.rr[e]
        w = self.edge_weights[e]
        act = self.active[e]
        if len(set(w)) == 1:  # Envoy: equal weights -> power of two choices
            a, b = self.rng.randrange(n), self.rng.randrange(n)
            return b if act[b] < act[a] else a
        # unequal weights: EDF on weight / (active + 1), the picked host re-added
        sched = self.edf[e]
        if not sched:
            self._rebuild(e)
        d, _, h = heapq.heappop(sched)
        self.edf_now[e] = d
        heapq.heappush(sched, (d + (act[h] + 1) / w[h], next(self._n), h))
        return h

    def _rebuild(self, e: int) -> None:
        w, act = self.edge_weights[e], self.active[e]
        base = self.edf_now[e]
        self.edf[e] = [
            (base + (act[h] + 1) / w[h] * self.rng.random(), next(self._n), h)
            for h in range(len(w))
        ]
        heapq.heapify(self.edf[e])

    # -- agents and control plane -----------------------------------------------------------
    def _record(self, a: Agent) -> ReplicaRecord:
        e = a.engine
        busy = 1.0 if e.running else 0.0
        util = e.external + (1 - e.external) * busy
        return ReplicaRecord(
            replica_id=f"gpu-{e.i}",
            node=f"gpu-{e.i}",
            region="us",
            zone="us-a",
            address="127.0.0.1",
            port=8000 + e.i,
            server_kind=ServerKind.VLLM,
            models=(ModelInfo("llama", "v1", ModelState.READY),),
            load=e.load(),
            gpus=(GpuStats(index=0, util_gpu=util),),
            speed=a.speed,
        )

    def poll(self, a: Agent) -> None:
        e = a.engine
        if self.estimate_speed:
            a.speed = a.estimator.update(self.now, e.tokens, len(e.running)) or a.speed
        load = e.load()
        if (
            a.published is None
            or load_changed(a.published, load)
            or self.now - a.published_at >= BEAT_S
        ):
            a.published, a.published_at = load, self.now
            self.publishes += 1
            self.records[e.i] = self._record(a)
            if not self._decide_pending:
                self._decide_pending = True
                self.at(self.now + self.coalesce_s + PUSH_DELAY_S, self.set_weights)
        self.at(self.now + POLL_S, self.poll, a)

    def set_weights(self) -> None:
        """The control plane: coalesce changes, decide, push the EDS if a weight moved."""
        self._decide_pending = False
        new = self.weight_policy(self.records)
        if new != self.weights:
            self.weights = new
            self.pushes += 1
            for e in range(EDGES):
                self.edge_weights[e] = list(new)
                self._rebuild(e)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def model_capacity(seed: int = 0, warmup: float = 4.0, window: float = 40.0) -> float:
    """Completions/s of the modelled fleet kept saturated (max_running + 2 per replica),
    with the scripted events: what ``bench.routing`` measures on the real fleet."""
    shape = ServerShape()
    sim = Sim("ROUND_ROBIN", 1.0, warmup, window, seed, shape)
    rng = random.Random(seed)
    count = [0]

    def feed(h: int) -> None:
        sim.engines[h].submit(Seq(PROMPT.draw(rng), OUTPUT.draw(rng), sim.now, host=h))

    def finished(s: Seq) -> None:
        if warmup <= sim.now < warmup + window:
            count[0] += 1
        if sim.now < warmup + window:
            feed(s.host)

    sim.finished = finished  # type: ignore[method-assign]
    for h in range(len(sim.engines)):
        for _ in range(shape.max_running + 2):
            sim.at(0.0, feed, h)
    for ev in EVENTS:
        sim.at(warmup + ev.at * window, sim.event, ev.replica, ev.control)
    while sim._q:
        t, _, fn, args = heapq.heappop(sim._q)
        if t > warmup + window:
            break
        sim.now = t
        fn(*args)
    return count[0] / window


@dataclass(frozen=True, slots=True)
class Outcome:
    e2e_p99: float
    ttft_p99: float
    pushes_per_s: float


def simulate(
    policy: str, rate: float, seed: int, window: float = 90.0, *, speed: bool = True
) -> Outcome:
    """One modelled run; ``policy`` is ROUND_ROBIN, LEAST_REQUEST or aixds."""
    sim = Sim(policy, rate, 4.0, window, seed, ServerShape(), estimate_speed=speed)
    done = sim.run()
    return Outcome(
        pct([s.done - s.arrived for s in done], 99),
        pct([s.first_token - s.arrived for s in done], 99),
        sim.pushes / (window + 4.0),
    )


VARIANTS: dict[str, tuple[str, bool]] = {
    "ROUND_ROBIN": ("ROUND_ROBIN", False),
    "LEAST_REQUEST": ("LEAST_REQUEST", False),
    "aixds": ("aixds", True),
    "aixds-no-speed": ("aixds", False),
}
"""Name -> (router, agents measure speed), as ``bench.routing`` names its policies."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loads", default="0.8", help="fractions of capacity (0.8)")
    ap.add_argument("--seeds", type=int, default=5, help="runs per point, averaged (5)")
    ap.add_argument("--window", type=float, default=90.0, help="measured seconds (90)")
    ap.add_argument("--policies", default=",".join(VARIANTS), help="subset, comma-separated")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a constant of controlplane.decide.weights, e.g. SPEED_EXP=2",
    )
    args = ap.parse_args(argv)
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(W, name):
            ap.error(f"controlplane.decide.weights has no {name}")
        setattr(W, name, type(getattr(W, name))(value))
    capacity = statistics.fmean(model_capacity(seed) for seed in range(3))
    print(f"model capacity {capacity:.2f} req/s; {args.seeds} seeds per point")
    for load in (float(x) for x in args.loads.split(",")):
        for name in args.policies.split(","):
            router, speed = VARIANTS[name]
            res = [
                simulate(router, load * capacity, seed, args.window, speed=speed)
                for seed in range(args.seeds)
            ]
            print(
                f"{name:<14}{load * 100:>4.0f}%  e2e p99 "
                f"{statistics.fmean(r.e2e_p99 for r in res):6.2f} s  ttft p99 "
                f"{statistics.fmean(r.ttft_p99 for r in res):6.2f} s  pushes/s "
                f"{statistics.fmean(r.pushes_per_s for r in res):5.2f}  (e2e p99 per seed: "
                + " ".join(f"{r.e2e_p99:.1f}" for r in res)
                + ")",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
