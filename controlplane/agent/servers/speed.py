"""``DecodeSpeed``: how fast one model server decodes, measured from its own counters.

The control plane favours fast replicas (``decide.weights``), so the record carries a
``speed``: decode tokens per second *per running sequence*, relative to a reference rate
(``reference_tps`` counts as 1.0). It is measured, not configured, because what matters
is what the server delivers now: an older GPU, a throttled host, a GPU shared with a noisy
neighbour or a server stuck in a slow mode all show up here before their queues grow.

Per scrape the adapter feeds ``observe`` what the server has: the count and sum of its
inter-token latency histogram (vLLM ``vllm:inter_token_latency_seconds``, SGLang
``sglang:inter_token_latency_seconds``) or of its decode steps (TGI
``tgi_batch_forward_duration{method="decode"}``; each step gives every running sequence one
token), whose ratio is the per-sequence rate over every token in between, however short the
requests; and its generated-token counter with the running gauge (the token rate between
two scrapes over the mean batch), which also counts one-token requests (no inter-token
interval) but only while sequences run at both scrapes. Samples are smoothed
exponentially (time constant ``tau_s``), so one odd scrape moves little but a real change
shows within a few seconds.

The published value moves on a ladder (powers of ``step``) with hysteresis: it changes
only once the estimate is more than ``HYSTERESIS`` of a rung away from the current one,
so an estimate sitting on a rung boundary does not flap (each flap would be a publish and
an xDS push). Counter resets (a restart) and intervals with tokens but no running
sequence at either end (generated-token counter only) are not samples: the last estimate
stays. Idle intervals (nothing decoded) are no evidence either, so over them the estimate
relaxes toward the capacity below (time constant ``idle_relax_s``): a replica measured
slow once gets little or no traffic from the control plane, and without this it would
never be measured again and stay "slow" after it recovered. Before the first sample the
speed is unknown (``None``) and the record keeps its default (1.0).

``capacity`` is the speed the server reaches at its best, for weights that must not follow
load (session affinity, ``decide.affinity``): the per-sequence rate falls as the batch
grows, so the estimate under load is not the GPU's capacity. It holds the highest estimate
seen, decaying toward the current one with time constant ``peak_decay_s`` (a GPU that
really got slower shows within tens of minutes), published on a coarse ladder
(``capacity_step``, sqrt 2) with the same hysteresis.

Only ratios between the replicas of one model matter (Envoy normalises weights), so every
agent of a fleet must use the same ``reference_tps``; its value only keeps numbers
readable (25 tokens/s = the fake server's default speed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controlplane import ladder

REFERENCE_TPS = 25.0
"""Per-sequence decode tokens/s published as speed 1.0 (``aixds agent --reference-tps``)."""
HYSTERESIS = 0.75
"""A rung change needs the estimate this many rungs (log scale) away from the current one
(0.5 would be plain rounding)."""
MIN_SPEED, MAX_SPEED = 0.001, 1000.0
"""The range the record's codec accepts."""


def snap(value: float, step: float) -> float:
    """The power of ``step`` nearest to ``value`` > 0 (log scale, ``ladder.snap`` as the weight
    policy uses it too), kept in the codec's range."""
    return min(MAX_SPEED, max(MIN_SPEED, ladder.snap(value, step)))


def next_rung(current: float | None, estimate: float, step: float) -> float:
    """What to publish for ``estimate`` when ``current`` is published (hysteresis)."""
    if current is not None and abs(math.log(estimate / current) / math.log(step)) <= HYSTERESIS:
        return current
    return snap(estimate, step)


@dataclass
class DecodeSpeed:
    """The decode speed of one model server; feed it every scrape with ``observe``."""

    reference_tps: float = REFERENCE_TPS
    tau_s: float = 2.0
    """Time constant of the exponential smoothing, s."""
    step: float = 1.25
    """The published speed is a power of this."""
    speed: float | None = None
    """The published estimate; ``None`` until the server has decoded something."""
    rate_tps: float = 0.0
    """The smoothed per-sequence decode rate, tokens/s (0 until measured)."""
    capacity_step: float = math.sqrt(2.0)
    """The published capacity is a power of this: session-affinity weights follow it, and
    the share of sessions a replica holds (and so moves when it leaves) should match its
    share of the capacity. On a 2x ladder a 1.5x GPU was 1 or 2 by the order it was
    measured in, and a 1.0 one held 14 % of the sessions of 8 mixed replicas instead of
    its 12 % (``bench.sessions`` mapping probe); on this one, 12.6 %."""
    peak_decay_s: float = 1800.0
    """Time constant with which the held best estimate decays toward the current one, s."""
    idle_relax_s: float = 120.0
    """Time constant with which an idle server's estimate returns toward its capacity, s.
    Minutes, not seconds: a replica shed from session affinity for being slow gets no
    session traffic, and when the relaxed estimate brings it back every one of its
    sessions moves back (each a full prefill if it is still slow). At 30 s,
    ``bench.sessions`` at 80 % saw the slowed replica shed, back 50 s later with no
    evidence, 15 turns at up to 13 s TTFT, and shed again 6 s later: the run's p99."""
    capacity: float | None = None
    """The published capacity (best recent speed); ``None`` until measured."""
    peak: float = 0.0
    """The held best estimate (relative to the reference)."""
    _last: tuple[float, float | None, float | None, tuple[float, float] | None] | None = field(
        default=None, repr=False
    )

    def __post_init__(self) -> None:
        if not (self.reference_tps > 0 and self.tau_s > 0 and self.step > 1):
            raise ValueError("reference_tps and tau_s must be > 0 and step > 1")

    def observe(
        self,
        now: float,
        *,
        generated: float | None = None,
        running: float | None = None,
        intervals: tuple[float, float] | None = None,
    ) -> float | None:
        """One scrape at monotonic time ``now``, with what the server has of: its generated-
        token counter, its running gauge, and its decode intervals and their seconds (decode
        steps, or an inter-token latency histogram's count and sum).

        The intervals measure best (every token after a sequence's first, however short
        the request); where none passed since the last scrape (requests of one token), the
        token counter over the mean running batch does, if sequences ran at both scrapes.
        Nothing decoded and nothing running (at both scrapes, as far as known): idle, the
        estimate relaxes. A counter that went back (a restart) gives no sample."""
        last, self._last = self._last, (now, generated, running, intervals)
        if last is None or now <= last[0]:
            return self.speed
        t0, g0, r0, i0 = last
        dt = now - t0
        dn = ds = dg = 0.0
        if intervals is not None and i0 is not None:
            dn, ds = intervals[0] - i0[0], intervals[1] - i0[1]
            if dn > 0 and ds > 0:
                return self._sample(dt, dn / ds)
        if generated is not None and g0 is not None:
            dg = generated - g0
            if dg > 0 and running is not None and r0 is not None and min(r0, running) >= 1:
                return self._sample(dt, dg / dt / ((r0 + running) / 2.0))
        if dn == ds == dg == 0 and running == 0 and r0 in (0, None):
            return self._relax(dt)
        return self.speed

    def _relax(self, dt: float) -> float | None:
        """An idle interval of ``dt`` s: the estimate moves toward the held best one (on a
        log scale, time constant ``idle_relax_s``), never away from it."""
        best = self.peak * self.reference_tps
        if self.rate_tps <= 0 or self.rate_tps >= best:
            return self.speed
        self.rate_tps *= (best / self.rate_tps) ** (1.0 - math.exp(-dt / self.idle_relax_s))
        estimate = min(MAX_SPEED, max(MIN_SPEED, self.rate_tps / self.reference_tps))
        self.speed = next_rung(self.speed, estimate, self.step)
        return self.speed

    def _sample(self, dt: float, sample: float) -> float | None:
        """Smooth one per-sequence rate measured over ``dt`` seconds; the published speed."""
        a = 1.0 - math.exp(-dt / self.tau_s)
        self.rate_tps = (
            sample if self.rate_tps == 0 else self.rate_tps + a * (sample - self.rate_tps)
        )
        estimate = min(MAX_SPEED, max(MIN_SPEED, self.rate_tps / self.reference_tps))
        self.speed = next_rung(self.speed, estimate, self.step)
        held = estimate + (self.peak - estimate) * math.exp(-dt / self.peak_decay_s)
        self.peak = max(estimate, held)
        self.capacity = next_rung(self.capacity, self.peak, self.capacity_step)
        return self.speed
