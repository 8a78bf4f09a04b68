"""Request and response bodies of the rollout API (pydantic), as ``/openapi.json`` shows them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

VersionName = Annotated[str, Field(min_length=1, max_length=128, description="a model version")]
Percent = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
Revision = Annotated[
    int | None,
    Field(
        default=None,
        ge=0,
        le=2**53,
        description="the intent revision this change is based on; if the stored one differs, "
        "the change is refused with 409 (optional: without it, the revision read by the "
        "server is used)",
    ),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRollout(_Body):
    """Blue-green switch to ``to`` (no ``canary_percent``), or a canary of ``to``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "v2", "canary_percent": 10}, {"to": "v2"}]},
    )

    to: VersionName
    canary_percent: Percent | None = Field(
        default=None, description="canary share in percent; omit for a blue-green switch"
    )
    revision: Revision = None


class SetPercent(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"percent": 50}]})

    percent: Percent
    revision: Revision = None


class RevisionOnly(_Body):
    revision: Revision = None


class RollbackBody(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "p99 latency up 40%"}]}
    )

    reason: str = Field(default="", max_length=2000, description="recorded with the rollback")
    revision: Revision = None


class ReplicaCounts(BaseModel):
    total: int
    serving: int
    ready: int


class DrainingView(BaseModel):
    phase: Literal["settling", "draining", "removed"]
    drain_at: float
    remove_at: float


class RollbackView(BaseModel):
    from_version: str
    to_version: str
    reason: str
    trigger: Literal["auto", "manual"]
    at: float


class RateView(BaseModel):
    version: str
    requests: int
    errors: int
    error_rate: float


class HealthView(BaseModel):
    """The latest automatic-rollback verdict of a canary."""

    stable: RateView
    canary: RateView
    window_start: float
    canary_low: float = Field(description="lower bound of the canary's error rate")
    stable_high: float = Field(description="upper bound of the stable's error rate")
    rollback: bool
    reason: str


class RolloutView(BaseModel):
    model: str
    stable: str | None
    canary: str | None
    canary_percent: float
    previous: str | None
    started_at: float | None
    traffic: dict[str, float] = Field(description="version -> percent of new requests now")
    fallback: str | None = Field(
        default=None,
        description="fail open: the version taking the traffic because the stable version "
        "has no serving replica (null while the stable serves); intent is unchanged, so "
        "traffic returns to the stable when it serves again",
    )
    draining: dict[str, DrainingView]
    last_rollback: RollbackView | None
    health: HealthView | None


class VersionView(BaseModel):
    version: str
    cluster: str
    role: Literal["stable", "canary", "draining", "idle"]
    traffic_percent: float
    replicas: ReplicaCounts
    replica_ids: list[str]


class ModelView(BaseModel):
    model: str
    versions: list[VersionView]
    rollout: RolloutView
    version_header: str = Field(description="request header that picks a version by name")
    session_header: str = Field(description="request header that keeps a session's version")


class ModelsView(BaseModel):
    revision: int
    models: list[ModelView]


class GuardView(BaseModel):
    enabled: bool
    this_replica: str
    acting: bool
    """True if this replica holds the lock and acts."""
    lock_holder: str | None
    window_s: float
    min_requests: int
    margin: float
    z: float


class RolloutsView(BaseModel):
    revision: int
    guard: GuardView | None
    rollouts: list[RolloutView]


class EnvoysView(BaseModel):
    current: int
    total: int


class ChangeResult(BaseModel):
    revision: int
    changed: bool
    """False: the intent already said this; nothing was written."""
    converged: bool
    """Every Envoy connected to this replica ACKed the new config before the answer."""
    envoys: EnvoysView
    rollout: RolloutView


class IntentView(BaseModel):
    revision: int
    epoch: str
    doc: dict[str, object] | None
    replication: dict[str, object] | None = None
    """With fleet.yaml ``intent.home``: the home, this region, and per region its copy's
    role, reachability, replication link, revision, lag and problems."""
