"""Where the agent's GPU telemetry comes from: the ``GpuSource`` Protocol and its sources.

Only ``none`` exists yet (no GPU stats in the record); ``nvml`` (pynvml) and ``sim``
(simulated GPUs for the demo) are named in the CLI contract and come later.
"""

from __future__ import annotations

from typing import Protocol

from controlplane.fleet.model import GpuStats

GPU_SOURCES = ("none", "nvml", "sim")
"""Values of ``aixds agent --gpu``."""


class GpuSource(Protocol):
    """Reads the node's GPUs. Called once per probe: it must be fast and not block long."""

    def read(self) -> tuple[GpuStats, ...]: ...


class NoGpu:
    """``--gpu none``: report no GPUs (a CPU-only node, or telemetry switched off)."""

    def read(self) -> tuple[GpuStats, ...]:
        return ()


def make_gpu_source(name: str) -> GpuSource:
    """The source named by ``--gpu``; ``ValueError`` for unknown or unimplemented ones."""
    if name == "none":
        return NoGpu()
    if name in GPU_SOURCES:
        raise ValueError(f"--gpu {name} is not implemented yet; use --gpu none")
    raise ValueError(f"unknown GPU source {name!r}; expected one of {', '.join(GPU_SOURCES)}")
