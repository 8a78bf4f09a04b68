"""``AgentConfig``: everything ``aixds agent`` was told, checked (built by ``main``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.agent.placement.converge import ExecTiming
from controlplane.agent.publisher import Target, Timing
from controlplane.agent.servers.discovery import ServerSpec
from controlplane.agent.servers.speed import REFERENCE_TPS
from controlplane.fleet.model import AvailableModel


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One node agent's settings."""

    redis_url: str
    node: str
    region: str
    zone: str
    servers: tuple[ServerSpec, ...] = ()
    """``--server`` flags."""
    gpu: str = "none"
    reference_tps: float = REFERENCE_TPS
    """``--reference-tps``: the per-sequence decode rate published as speed 1.0."""
    timing: Timing = field(default_factory=Timing)
    versions: Mapping[str, str] = field(default_factory=dict)
    """``--model-version MODEL=VERSION``: overrides what the server reports."""
    advertise: str | None = None
    """Address published for every replica; default: each server's own (URL host, or the
    container's published address, or this node's address)."""
    config_path: Path | None = None
    """``--config agent.yaml``: more servers, read again at every discovery."""
    docker: bool = False
    """``--docker``: servers are also the labelled containers of the local Docker."""
    docker_url: str | None = None
    """``--docker-url``; default: the environment (``DOCKER_HOST``, the local socket)."""
    discover_interval_s: float = 5.0
    """Look for servers again this often (with ``--config`` or ``--docker``)."""
    takeover: bool = False
    """Replace an agent that holds this node's lock instead of exiting with code 3."""
    lock_ttl_s: float = 15.0
    """TTL of the node lock; refreshed every third of it."""
    exec_timing: ExecTiming = field(default_factory=ExecTiming)
    host_mem_bytes: int = 0
    """``--host-memory``: what the node's sleeping weights may take (0: not reported)."""
    available: Mapping[str, tuple[AvailableModel, ...]] = field(default_factory=dict)
    """``--available SERVER=MODEL[:GB[:LOAD_S]],...``: by replica name, what a server can
    load on demand when it cannot say itself (real vLLM; see ``servers.ondemand``)."""

    def target(self, spec: ServerSpec) -> Target:
        """The record identity of a discovered server (``spec.address`` must be resolved)."""
        return Target(
            replica_id=f"{self.node}/{spec.replica_name}",
            node=self.node,
            region=self.region,
            zone=self.zone,
            address=spec.address or spec.host,
            port=spec.port,
            kind=spec.kind,
            host_mem_bytes=self.host_mem_bytes,
        )
