"""Observed-state dataclasses: what an agent reports about one model-server replica.

A replica is one model-server endpoint (address:port) on a GPU node. Its record lists the
models it has (with version and state), the GPUs it runs on, and its current load.
These types are plain, immutable data: no I/O, no protobuf.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class ModelState(enum.StrEnum):
    """Lifecycle of one model version on one replica."""

    LOADING = "loading"
    """Weights are being loaded; the replica cannot serve this model yet."""
    WARMING = "warming"
    """Loaded, still compiling graphs / filling caches: serves, but slowly. Ramped in."""
    READY = "ready"
    """Serving at full speed."""
    UNLOADING = "unloading"
    """Being removed: drained (no new requests) until it disappears."""
    SLEEPING = "sleeping"
    """Loaded, but the server sleeps (vLLM sleep mode, SGLang released memory): weights
    are off the GPU and no request is served; waking takes about a second, far less than
    a load. Not an endpoint."""


class ServerKind(enum.StrEnum):
    """Model-server software behind a replica."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TGI = "tgi"
    TRITON = "triton"
    TRTLLM = "trtllm"
    OLLAMA = "ollama"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model version present on a replica."""

    name: str
    version: str
    state: ModelState


@dataclass(frozen=True, slots=True)
class ModelFailure:
    """A load or unload the agent was asked for and could not do (it keeps retrying)."""

    name: str
    version: str
    op: str
    """``load`` or ``unload``."""
    error: str
    """The server's answer or the agent's reason, at most ``MAX_ERROR_CHARS`` characters."""
    failures: int = 1
    """Failed attempts in a row."""
    permanent: bool = False
    """True when retrying cannot help (the server kind cannot load at runtime)."""


MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class AvailableModel:
    """A model a replica can load on demand (it is on the node's disk or in the server's
    repository), with what loading it costs."""

    name: str
    version: str = ""
    """The version it will report once loaded; empty when the server does not say."""
    mem_bytes: int = 0
    """GPU memory its weights take once loaded; 0 when unknown."""
    load_s: float = 0.0
    """How long a load takes: the last measured load on this replica, else the server's or
    the operator's estimate; 0 when unknown."""
    wake_s: float = 0.0
    """How long a wake from sleep takes (0 when unknown or the server cannot sleep)."""


@dataclass(frozen=True, slots=True)
class GpuStats:
    """One GPU's telemetry as read by the agent (NVML or simulated)."""

    index: int
    uuid: str = ""
    util_gpu: float = 0.0
    """GPU utilization, 0..1."""
    util_mem: float = 0.0
    """Memory-controller utilization, 0..1."""
    mem_used_bytes: int = 0
    mem_total_bytes: int = 0
    temperature_c: float = 0.0
    power_w: float = 0.0
    power_limit_w: float = 0.0
    throttled: bool = False
    """Thermal or power clock-event reasons are active (lowers the weight)."""
    faulty: bool = False
    """XID critical error, new uncorrectable ECC error or remapped-row failure."""
    fault_reason: str = ""


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Model-server load, as the server itself reports it."""

    queue_waiting: float = 0.0
    """Requests waiting to be scheduled."""
    running: float = 0.0
    """Requests being decoded now."""
    kv_cache_usage: float = 0.0
    """KV-cache use, 0..1."""
    prefix_cache_hit_rate: float | None = None
    """Share of recent prompt tokens found in the server's prefix cache, 0..1; ``None``
    when the server does not say (no prefix cache, no such metric, nothing looked up yet)."""


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """Everything one agent publishes about one replica (one model-server endpoint)."""

    replica_id: str
    """Unique, stable id: ``<node>/<server-name>``."""
    node: str
    region: str
    zone: str
    address: str
    port: int
    server_kind: ServerKind
    models: tuple[ModelInfo, ...]
    load: LoadStats = field(default_factory=LoadStats)
    gpus: tuple[GpuStats, ...] = ()
    timestamp: float = 0.0
    """Agent wall clock (seconds since the epoch) when the record was written."""
    speed: float = 1.0
    """Relative throughput of this replica's hardware (1.0 = reference GPU); optional."""
    capacity: float = 1.0
    """Its best recent speed on a coarse ladder: changes far less often than ``speed``,
    which falls as the batch grows (session-affinity weights use it); optional."""
    speed_measured: bool = True
    """False while the agent has not measured the server yet: ``speed`` and ``capacity``
    are then only the defaults, and the control plane counts the replica as fast as its
    measured peers (a default of 1.0 next to peers measured at 30 would starve it of the
    very traffic that measures it)."""
    draining: bool = False
    """The operator or the agent asked that this replica take no new requests."""
    failures: tuple[ModelFailure, ...] = ()
    """Loads or unloads of the node's desired models that failed on this replica."""
    available: tuple[AvailableModel, ...] = ()
    """Models this replica can load on demand (loaded ones may be listed too)."""
    sleeping: bool = False
    """The server sleeps (its models are published ``sleeping``)."""
    host_mem_bytes: int = 0
    """Host memory the node's sleeping weights may take (``aixds agent --host-memory``;
    every replica of a node carries the node's value); 0: not reported, so the control plane
    assumes ``--host-sleep-ratio`` times the node's GPU memory."""
    lost: tuple[tuple[str, str], ...] = ()
    """``(name, version)`` the server served until it stopped answering, while its agent
    still runs (bounded by the agent's ``--lost-hold``): the control plane keeps the replica
    in those versions' clusters as UNHEALTHY, so Envoy's priority health counts the missing
    capacity and spills the lost share to the next region instead of piling it on the
    survivors."""

    def model(self, name: str, version: str) -> ModelInfo | None:
        for m in self.models:
            if m.name == name and m.version == version:
                return m
        return None


@dataclass(frozen=True, slots=True)
class ObservedReplica:
    """A replica record as the control plane holds it, with its expiry on our own clock.

    ``expires_at`` is the control plane's wall clock at read time plus the key's remaining
    TTL, so freshness never depends on the agent's clock.
    """

    record: ReplicaRecord
    expires_at: float


FleetView = Mapping[str, ObservedReplica]
"""All replicas the control plane knows, by replica id."""
