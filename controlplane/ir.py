"""The plan: what one Envoy node group should have, as plain data free of protobuf.

``decide()`` produces a ``Plan``; the builders in ``controlplane.xds`` translate it into
xDS resources. ``Plan.validate()`` returns named problems instead of raising, so a plan
that would be invalid is never published and Envoy keeps the last good config.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Health(enum.StrEnum):
    """EDS health of an endpoint (see ENVOY-NOTES: DRAINING is excluded entirely)."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    DRAINING = "DRAINING"
    UNHEALTHY = "UNHEALTHY"


class LbPolicy(enum.StrEnum):
    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


@dataclass(frozen=True, slots=True)
class EndpointIR:
    """One replica serving one model version."""

    replica_id: str
    address: str
    port: int
    weight: int
    """EDS load_balancing_weight, >= 1 (Envoy NACKs 0)."""
    health: Health
    region: str
    zone: str
    priority: int
    """0 = the Envoy's own region; other regions follow by distance."""


@dataclass(frozen=True, slots=True)
class OutlierIR:
    consecutive_5xx: int = 3
    consecutive_gateway_failure: int = 2
    consecutive_local_origin_failure: int = 2
    interval_ms: int = 1000
    base_ejection_ms: int = 10_000
    max_ejection_ms: int = 10_000
    """Cap on a repeated ejection (Envoy multiplies the base by the ejection count, up to
    300 s by default): a host that died with its region is tried again at least this
    often, so the region's traffic comes back within this long after it returns."""
    max_ejection_percent: int = 100
    always_eject_one_host: bool = True


@dataclass(frozen=True, slots=True)
class ClusterIR:
    """One Envoy cluster: one (model, version)."""

    name: str
    model: str
    version: str
    endpoints: tuple[EndpointIR, ...]
    lb_policy: LbPolicy = LbPolicy.LEAST_REQUEST
    connect_timeout_ms: int = 1000
    max_connections: int = 10_000
    max_pending_requests: int = 10_000
    max_requests: int = 10_000
    max_retries: int = 1000
    """Raised from Envoy's default 3: under load most retries would overflow."""
    outlier: OutlierIR = field(default_factory=OutlierIR)
    slow_start_window_s: float = 0.0
    """> 0: ramp new or warming hosts over this window (LEAST_REQUEST/ROUND_ROBIN only)."""
    hash_balance_factor: int = 0
    """> 0 with RING_HASH/MAGLEV: bound per-host load (percent, >= 100)."""
    overprovisioning_factor: int = 140
    """Envoy's default: P0 keeps all load until its health drops under 100/1.4."""


@dataclass(frozen=True, slots=True)
class WeightedClusterIR:
    cluster: str
    weight: int
    version: str = ""
    """The model version the cluster serves: answered in the ``x-aixds-version`` response
    header ('' for none, e.g. the activator)."""


@dataclass(frozen=True, slots=True)
class RetryIR:
    num_retries: int = 3
    retriable_status_codes: tuple[int, ...] = (503,)
    host_selection_retry_max_attempts: int = 5
    per_try_idle_timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class ModelRouteIR:
    """Routing for one model name: weighted clusters across its versions."""

    model: str
    clusters: tuple[WeightedClusterIR, ...]
    session_header: str = ""
    """Non-empty: hash on this header so a session keeps its version (sticky canary)."""
    version_header: str = "x-model-version"
    """A request carrying this header with a version name goes to that version's cluster."""
    versions: tuple[tuple[str, str], ...] = ()
    """(version, cluster) pairs reachable through ``version_header``."""
    affinity_clusters: tuple[WeightedClusterIR, ...] = ()
    """Non-empty (session affinity on): a request with a session key (``session_key_header``
    or the body's ``user``) goes to these hash clusters instead, same version split,
    hashed on the key so each session keeps one replica (and one version)."""
    session_key_header: str = ""
    """The header that carries a session key for affinity (with ``affinity_clusters``)."""
    regions_differ: str = ""
    """Non-empty when the live regions do not all serve the same versions of this model
    name (``decide.region_diff``): answered in the ``x-aixds-regions-differ`` response
    header, e.g. ``eu-west=v1; us-east=v1,v2``."""
    activator: bool = False
    """The model is cold (loadable, served nowhere): ``clusters`` is the activator, which
    holds each request until a replica is ready (``decide.cold``). The route tells it the
    model and the Envoy listener to send the request back to."""


@dataclass(frozen=True, slots=True)
class RouteConfigIR:
    name: str
    models: tuple[ModelRouteIR, ...]
    model_header: str = "x-model"
    retry: RetryIR = field(default_factory=RetryIR)
    idle_timeout_ms: int = 300_000
    """Stream idle timeout per route; the total timeout is 0 (unbounded) for streaming."""
    version_headers: bool = True
    """Answer with ``x-aixds-version`` and ``x-aixds-regions-differ`` (fleet.yaml's
    ``version_headers``); False: neither reaches a client (they name versions and regions)."""


@dataclass(frozen=True, slots=True)
class ListenerIR:
    name: str
    address: str
    port: int
    route_config: str
    max_request_bytes: int = 8 * 1024 * 1024
    """Body buffer limit for json_to_metadata (Envoy's default answers 413 over 1 MiB)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one Envoy node group should have."""

    clusters: tuple[ClusterIR, ...]
    route_configs: tuple[RouteConfigIR, ...]
    listeners: tuple[ListenerIR, ...]

    def shed(self) -> frozenset[tuple[str, str]]:
        """(affinity cluster, replica id) of the replicas shed (DEGRADED) from session
        affinity in this plan."""
        return frozenset(
            (c.name, e.replica_id)
            for c in self.clusters
            if c.name.endswith(AFFINITY_SUFFIX)
            for e in c.endpoints
            if e.health is Health.DEGRADED
        )

    def validate(self) -> list[str]:
        """Named problems; an empty list means the plan may be published."""
        problems: list[str] = []
        names = [c.name for c in self.clusters]
        if len(names) != len(set(names)):
            problems.append("duplicate-cluster-name")
        known = set(names)
        for c in self.clusters:
            for e in c.endpoints:
                if e.weight < 1:
                    problems.append(f"endpoint-weight-below-1:{c.name}:{e.replica_id}")
                if e.priority < 0:
                    problems.append(f"negative-priority:{c.name}:{e.replica_id}")
        rc_names = {r.name for r in self.route_configs}
        for rc in self.route_configs:
            for m in rc.models:
                if not m.clusters or sum(w.weight for w in m.clusters) <= 0:
                    problems.append(f"route-without-weight:{m.model}")
                if m.affinity_clusters and not m.session_key_header:
                    problems.append(f"affinity-without-session-key:{m.model}")
                for w in (*m.clusters, *m.affinity_clusters):
                    if w.cluster not in known:
                        problems.append(f"route-to-missing-cluster:{m.model}:{w.cluster}")
        for lis in self.listeners:
            if lis.route_config not in rc_names:
                problems.append(f"listener-without-route-config:{lis.name}")
        return problems


AFFINITY_SUFFIX = "#affinity"
ACTIVATOR_CLUSTER = "aixds-activator"
"""The cluster of the control planes' activators (no model, no version)."""
ACTIVATOR_RETURN_HEADER = "x-aixds-return"
"""Set by Envoy on a cold model's route (overwriting what a client sent): the listener
address the request came in on, where the activator sends it back once a replica is ready."""
ACTIVATOR_MODEL_HEADER = "x-aixds-model"
"""Set by Envoy on a cold model's route: the model the request is for."""


def cluster_name(model: str, version: str) -> str:
    """The Envoy cluster name of one model version."""
    return f"{model}@{version}"


def affinity_cluster_name(model: str, version: str) -> str:
    """The Envoy cluster of one model version that sessions hash onto (session affinity)."""
    return f"{model}@{version}{AFFINITY_SUFFIX}"


def version_cluster(name: str) -> str:
    """The model version's cluster name for any of its clusters (affinity or not): load
    reports of both count for the same version."""
    return name.removesuffix(AFFINITY_SUFFIX)
