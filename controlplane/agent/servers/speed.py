"""``DecodeSpeed``: how fast one model server decodes, measured from its own counters.

The control plane favours fast replicas (``decide.weights``), so the record carries a
``speed``: decode tokens per second *per running sequence*, relative to a reference rate
(``reference_tps`` counts as 1.0). It is measured, not configured, because what matters
is what the server delivers now: an older GPU, a throttled host, a GPU shared with a noisy
neighbour or a server stuck in a slow mode all show up here before their queues grow.

Per scrape the adapter feeds either the server's generated-token counter (vLLM
``vllm:generation_tokens_total``, SGLang ``sglang:generation_tokens_total``) and its
running-requests gauge (``update``: the token rate between two scrapes divided by the mean
batch is one sample), or its decode-step counters (TGI ``tgi_batch_forward_duration``'s
count and sum for ``method="decode"``: ``update_steps``; each decode step gives every
running sequence one token, so steps per second of stepping is the per-sequence rate).
Samples are smoothed exponentially (time constant ``tau_s``), so one odd scrape moves
little but a real change shows within a few seconds.

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
(``capacity_step``) with the same hysteresis.

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
    """The decode speed of one model server; feed it every scrape with ``update``."""

    reference_tps: float = REFERENCE_TPS
    tau_s: float = 2.0
    """Time constant of the exponential smoothing, s."""
    step: float = 1.25
    """The published speed is a power of this."""
    speed: float | None = None
    """The published estimate; ``None`` until the server has decoded something."""
    rate_tps: float = 0.0
    """The smoothed per-sequence decode rate, tokens/s (0 until measured)."""
    capacity_step: float = 2.0
    """The published capacity is a power of this."""
    peak_decay_s: float = 1800.0
    """Time constant with which the held best estimate decays toward the current one, s."""
    idle_relax_s: float = 30.0
    """Time constant with which an idle server's estimate returns toward its capacity, s."""
    capacity: float | None = None
    """The published capacity (best recent speed); ``None`` until measured."""
    peak: float = 0.0
    """The held best estimate (relative to the reference)."""
    _last: tuple[float, float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (self.reference_tps > 0 and self.tau_s > 0 and self.step > 1):
            raise ValueError("reference_tps and tau_s must be > 0 and step > 1")

    def update(self, now: float, generated_total: float, running: float) -> float | None:
        """One scrape at monotonic time ``now``: the token counter and the running gauge."""
        last, self._last = self._last, (now, generated_total, running)
        if last is None:
            return self.speed
        t0, g0, r0 = last
        dt, dg = now - t0, generated_total - g0
        if dt > 0 and dg == 0 and r0 == running == 0:
            return self._relax(dt)
        if dt <= 0 or dg <= 0 or min(r0, running) < 1.0:
            return self.speed  # not running at either end, or a counter reset
        return self._sample(dt, dg / dt / ((r0 + running) / 2.0))

    def update_steps(
        self,
        now: float,
        steps_total: float,
        step_seconds_total: float,
        running: float | None = None,
    ) -> float | None:
        """One scrape: decode steps (or inter-token intervals) so far and the seconds spent
        in them (both counters), and the running gauge if the server has one (an interval
        with nothing decoded is idle only if nothing was running: a stalled server is not
        idle)."""
        last, self._last = self._last, (now, steps_total, step_seconds_total)
        if last is None:
            return self.speed
        t0, n0, s0 = last
        dt, dn, ds = now - t0, steps_total - n0, step_seconds_total - s0
        if dt > 0 and dn == 0 and ds == 0 and running == 0:
            return self._relax(dt)
        if dt <= 0 or dn <= 0 or ds <= 0:
            return self.speed  # a counter reset, or a reading that makes no sense
        return self._sample(dt, dn / ds)

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
