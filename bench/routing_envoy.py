"""Static Envoy bootstraps for the baselines, built by aixds's own xDS builders.

For a fair comparison the baselines get exactly the cluster, listener and routes aixds
would push (same retries, timeouts, circuit breakers, outlier detection, body routing),
except that the endpoints are static with equal weights and the load-balancing policy is
the baseline's. The builders' protobuf messages are turned into JSON (a YAML subset Envoy
reads as a bootstrap): the EDS cluster becomes STATIC with its load assignment inline, and
the listener's RDS becomes an inline route configuration.

The policy and the session header are set on the IR (``ClusterIR.lb_policy``,
``ModelRouteIR.session_header``), so the builders add what goes with them (the Maglev
table size, the route's hash policy on the header, else on the body's ``user``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format  # type: ignore[import-untyped]

from controlplane.decide import EnvoyNode, decide
from controlplane.fleet.model import (
    FleetView,
    ModelInfo,
    ModelState,
    ObservedReplica,
    ReplicaRecord,
    ServerKind,
)
from controlplane.intent import Intent
from controlplane.ir import LbPolicy
from controlplane.xds.build import build_resources
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


def static_fleet(
    replicas: Sequence[tuple[str, int]], model: str, version: str, region: str, zone: str
) -> FleetView:
    """(replica_id, port) on 127.0.0.1 -> a fleet view of idle, ready replicas."""
    out: dict[str, ObservedReplica] = {}
    for rid, port in replicas:
        rec = ReplicaRecord(
            replica_id=rid,
            node=rid.split("/")[0],
            region=region,
            zone=zone,
            address="127.0.0.1",
            port=port,
            server_kind=ServerKind.VLLM,
            models=(ModelInfo(model, version, ModelState.READY),),
        )
        out[rid] = ObservedReplica(record=rec, expires_at=float("inf"))
    return out


def _dict(msg: Any) -> dict[str, Any]:
    d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return d


def static_bootstrap(
    *,
    policy: LbPolicy,
    replicas: Sequence[tuple[str, int]],
    node_id: str,
    listen_port: int,
    admin_port: int,
    model: str,
    version: str,
    region: str = "us",
    zone: str = "us-a",
    session_header: str = "",
) -> str:
    """The bootstrap JSON of one static edge Envoy with ``policy`` over ``replicas``;
    with ``session_header``, every model route hashes on it (for RING_HASH and MAGLEV)."""
    node = EnvoyNode(region=region, zone=zone, listen_port=listen_port)
    # one cluster per version, as the policy says (no session-affinity cluster)
    no_affinity = Intent(affinity_default=False)
    plan = decide(static_fleet(replicas, model, version, region, zone), no_affinity, node, 0.0)
    plan = replace(
        plan,
        clusters=tuple(replace(c, lb_policy=policy) for c in plan.clusters),
        route_configs=tuple(
            replace(rc, models=tuple(replace(m, session_header=session_header) for m in rc.models))
            for rc in plan.route_configs
        ),
    )
    res = build_resources(plan)
    cla_by_name = {c.cluster_name: c for c in res[ENDPOINT]}
    clusters: list[dict[str, Any]] = []
    for c in res[CLUSTER]:
        c.type = cluster_pb2.Cluster.STATIC
        c.ClearField("eds_cluster_config")
        cla = cla_by_name[c.name]
        for loc in cla.endpoints:
            for ep in loc.lb_endpoints:
                ep.load_balancing_weight.value = 1  # static: every host the same
        c.load_assignment.CopyFrom(cla)
        clusters.append(_dict(c))
    (route_config,) = res[ROUTE]
    listeners: list[dict[str, Any]] = []
    for lis in res[LISTENER]:
        d = _dict(lis)
        for chain in d["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                hcm.pop("rds")
                hcm["route_config"] = _dict(route_config)
        listeners.append(d)
    doc = {
        "node": {"id": node_id, "cluster": "bench-static", "locality": {"region": region}},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"clusters": clusters, "listeners": listeners},
    }
    return json.dumps(doc, indent=1)
