"""``aixds agent`` plus a measured decode speed in every record: a prototype for the agent.

The stock agent publishes ``speed = 1.0`` (``ReplicaRecord.speed``'s default): the control
plane cannot tell a fast GPU from a slow one, a throttled host or a GPU shared with a
noisy neighbour until their queues differ. This module runs the real agent unchanged
except for two hooks, so the benchmark can show what a measured speed is worth:

- the vLLM adapter also reads ``vllm:generation_tokens_total`` from the same ``/metrics``
  scrape and feeds ``DecodeSpeed``;
- each record the publisher builds carries that replica's ``DecodeSpeed.speed``.

``DecodeSpeed`` is what the agent should own (``controlplane/agent``): decode tokens per
second per running sequence, smoothed over a couple of seconds, relative to a reference
rate, snapped to a coarse ladder so that noise does not cause publishes or pushes.

    python -m bench.routing_agent --redis URL --node gpu-0 ...   # the flags of aixds agent
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

REFERENCE_TPS = 25.0
"""Per-sequence decode tokens/s of the reference GPU (speed 1.0); the fake's 1/tpot."""


def snap(value: float, step: float) -> float:
    """Nearest ``step ** n`` (log scale), so small changes leave the value as it was."""
    return float(step ** round(math.log(value) / math.log(step)))


@dataclass
class DecodeSpeed:
    """Relative decode speed of one model server, from its token counter and batch size."""

    reference_tps: float = REFERENCE_TPS
    tau_s: float = 2.0
    """Time constant of the exponential smoothing."""
    step: float = 1.25
    """The published speed is snapped to powers of this."""
    speed: float = 1.0
    """The latest estimate (1.0 until the server has decoded something)."""
    _rate: float = 0.0
    _last: tuple[float, float, float] | None = None

    def update(self, now: float, generated_total: float, running: float) -> float:
        """Feed one scrape: the counter ``vllm:generation_tokens_total`` and the running gauge."""
        last, self._last = self._last, (now, generated_total, running)
        if last is None:
            return self.speed
        t0, g0, r0 = last
        dt, dg, busy = now - t0, generated_total - g0, (r0 + running) / 2.0
        if dt <= 0 or dg <= 0 or busy < 1.0:
            return self.speed  # idle, or a counter reset: keep what we knew
        rate = dg / dt / busy
        a = 1.0 - math.exp(-dt / self.tau_s)
        self._rate = rate if self._rate == 0 else self._rate + a * (rate - self._rate)
        self.speed = snap(self._rate / self.reference_tps, self.step)
        return self.speed


def counter_total(text: str, name: str) -> float | None:
    """Sum of a counter's series in Prometheus text (cheap: no full parse)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in "{ "):
            try:
                total += float(line.rsplit(" ", 1)[1])
                seen = True
            except (ValueError, IndexError):
                return None
    return total if seen else None


ESTIMATES: dict[int, DecodeSpeed] = {}
"""Model-server port -> its estimator (one agent process serves one node)."""


def install() -> None:
    """Hook the estimator into the real agent (adapter and record builder)."""
    from controlplane.agent import adapters, publisher, vllm
    from controlplane.agent.scrape import Reading, Reply

    class SpeedVllmAdapter(vllm.VllmAdapter):
        def read_load(self, reply: Reply) -> Reading:
            reading = super().read_load(reply)
            gen = counter_total(reply.text, "vllm:generation_tokens_total")
            if gen is not None and reading.running is not None:
                port = int(self._base.rsplit(":", 1)[1].split("/", 1)[0])
                est = ESTIMATES.setdefault(port, DecodeSpeed())
                est.update(time.monotonic(), gen, reading.running)
            return reading

    build_record = publisher.build_record

    def build_record_with_speed(target: Any, *args: Any, **kw: Any) -> Any:
        rec = build_record(target, *args, **kw)
        est = ESTIMATES.get(target.port)
        return rec if est is None else replace(rec, speed=est.speed)

    adapters.VllmAdapter = SpeedVllmAdapter  # type: ignore[attr-defined]
    publisher.build_record = build_record_with_speed


def main(argv: list[str] | None = None) -> int:
    install()
    from controlplane.cli import main as aixds

    return aixds(["agent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
