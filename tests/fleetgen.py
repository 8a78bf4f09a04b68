"""Builders of observed fleet state for tests: short and explicit."""

from __future__ import annotations

from controlplane.fleet.model import (
    GpuStats,
    LoadStats,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)


def replica(
    rid: str,
    *,
    region: str = "us",
    zone: str = "us-a",
    port: int = 8000,
    models: tuple[tuple[str, str, ModelState], ...] = (("llama", "v1", ModelState.READY),),
    waiting: float = 0,
    running: float = 0,
    kv: float = 0.0,
    speed: float = 1.0,
    capacity: float | None = None,
    gpus: tuple[GpuStats, ...] = (),
    draining: bool = False,
    expires_at: float = 100.0,
    speed_measured: bool = True,
) -> ObservedReplica:
    return ObservedReplica(
        record=ReplicaRecord(
            replica_id=rid,
            node=rid.split("/")[0],
            region=region,
            zone=zone,
            address="127.0.0.1",
            port=port,
            server_kind=ServerKind.VLLM,
            models=tuple(ModelInfo(n, v, s) for n, v, s in models),
            load=LoadStats(queue_waiting=waiting, running=running, kv_cache_usage=kv),
            gpus=gpus,
            timestamp=1.0,
            speed=speed,
            capacity=speed if capacity is None else capacity,
            speed_measured=speed_measured,
            draining=draining,
        ),
        expires_at=expires_at,
    )


def fleet(*reps: ObservedReplica) -> dict[str, ObservedReplica]:
    return {r.record.replica_id: r for r in reps}
