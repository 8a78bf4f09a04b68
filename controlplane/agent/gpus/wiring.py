"""Which GPU source each discovered model server gets (``--gpu``), made and closed with it.

``make_gpu_source`` is the one place that picks a source by name, so it imports the
sources (``nvml``, ``sim``, ``poll``); they import only ``source``, never this module.

``none`` and ``nvml`` share one node-wide source among all servers; ``sim`` reads each
fake server's own simulated GPU, so it is made when the server appears and closed when it
leaves. ``--server-gpus PORT=GPUS`` narrows a server's source to its own GPUs
(CUDA_VISIBLE_DEVICES-style indices or UUIDs), keyed by the server's port.
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.agent.gpus.nvml import NvmlGpuSource
from controlplane.agent.gpus.poll import PolledGpuSource
from controlplane.agent.gpus.selection import GpuSelection, SelectedGpus
from controlplane.agent.gpus.sim import SimGpuSource
from controlplane.agent.gpus.source import GpuSource, NoGpu
from controlplane.agent.servers.discovery import ServerSpec

log = logging.getLogger(__name__)

GPU_SOURCES = ("none", "nvml", "sim")
"""Values of ``aixds agent --gpu``."""


def make_gpu_source(name: str, server_url: str | None = None) -> GpuSource:
    """The source named by ``--gpu``; ``ValueError`` for an unknown name.

    ``sim`` reads one fake LLM server's simulated GPU, so it needs that server's
    ``server_url``; the others ignore it. ``nvml`` and ``sim`` are read in a background
    thread that starts here.
    """
    if name == "none":
        return NoGpu()
    if name == "nvml":
        return PolledGpuSource(NvmlGpuSource(), name="nvml").start()
    if name == "sim":
        if not server_url:
            raise ValueError("--gpu sim needs the model server's URL (its simulated GPU)")
        return PolledGpuSource(SimGpuSource(server_url), name=f"sim {server_url}").start()
    raise ValueError(f"unknown GPU source {name!r}; expected one of {', '.join(GPU_SOURCES)}")


class NodeGpus:
    """Hands out GPU sources per server; ``close`` ends every one it made."""

    def __init__(self, kind: str, selections: dict[int, GpuSelection] | None = None) -> None:
        """``ValueError`` for a source that cannot be made (so the agent exits 2 at once)."""
        self.kind = kind
        self._selections = dict(selections or {})
        self._shared: GpuSource | None = None if kind == "sim" else make_gpu_source(kind)
        self._own: dict[str, GpuSource] = {}

    def for_server(self, spec: ServerSpec) -> GpuSource:
        if self.kind == "sim":
            src = make_gpu_source("sim", spec.url)
            self._own[spec.replica_name] = src
        else:
            assert self._shared is not None
            src = self._shared
        sel = self._selections.get(spec.port)
        return src if sel is None else SelectedGpus(src, sel)

    def release(self, spec: ServerSpec) -> None:
        """The server left: close its own source (shared ones stay)."""
        _close(self._own.pop(spec.replica_name, None))

    def close(self) -> None:
        for src in [*self._own.values(), self._shared]:
            _close(src)
        self._own.clear()
        self._shared = None


def _close(src: Any) -> None:
    close = getattr(src, "close", None)
    if callable(close):
        try:
            close()
        except Exception as e:  # a stuck reader thread must not block shutdown
            log.warning("closing a GPU source: %s", e)
