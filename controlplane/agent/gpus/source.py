"""Where the agent's GPU telemetry comes from: the ``GpuSource`` Protocol and its sources.

- ``none``: no GPU stats in the record (``NoGpu``).
- ``nvml``: the node's GPUs through NVML (``nvml.NvmlGpuSource``), read in a background
  thread (``poll.PolledGpuSource``) so that a slow or hung driver never blocks the
  agent's event loop; one reader per node, filtered per model server (``selection``).
- ``sim``: the simulated GPU of a fake LLM server (``sim.SimGpuSource``), read through
  the same NVML code path, so fault detection and latching are the same as on real GPUs.

This module holds only the Protocol and the helpers every source shares (``sane``), so
the sources import it and nothing imports them back: ``wiring.make_gpu_source`` builds
one for ``aixds agent --gpu``; ``faults`` has the latch and the operator's clear.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol

from controlplane.fleet.model import GpuStats

MAX_REASON = 200
"""Longest ``fault_reason`` published (the codec allows more; a reason is a short label)."""


class GpuSource(Protocol):
    """Reads the node's GPUs. Called once per probe: it must be fast and not block long."""

    def read(self) -> tuple[GpuStats, ...]: ...


class NoGpu:
    """``--gpu none``: report no GPUs (a CPU-only node, or telemetry switched off)."""

    def read(self) -> tuple[GpuStats, ...]:
        return ()


def sane(g: GpuStats) -> GpuStats:
    """Clamp every field into the range the record codec accepts (NaN counts as 0).

    A driver that reports 255% utilization or a 2**64 counter must not make the whole
    record undecodable (the replica would vanish from the fleet).
    """

    def num(v: float, lo: float, hi: float) -> float:
        return min(hi, max(lo, v)) if math.isfinite(v) else 0.0

    return replace(
        g,
        index=int(num(g.index, 0, 1024)),
        uuid=g.uuid[:256],
        util_gpu=num(g.util_gpu, 0.0, 1.0),
        util_mem=num(g.util_mem, 0.0, 1.0),
        mem_used_bytes=int(num(g.mem_used_bytes, 0, 2**50)),
        mem_total_bytes=int(num(g.mem_total_bytes, 0, 2**50)),
        temperature_c=num(g.temperature_c, -50.0, 200.0),
        power_w=num(g.power_w, 0.0, 1e5),
        power_limit_w=num(g.power_limit_w, 0.0, 1e5),
        fault_reason=g.fault_reason[:MAX_REASON] if g.faulty else "",
    )
