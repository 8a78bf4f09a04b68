"""Golden cases: where they live, how built resources become YAML, a static Envoy config.

``static_bootstrap`` turns the built resources into one Envoy bootstrap without a control
plane: clusters become STATIC with their load assignment inline, listeners get their route
configuration inline instead of RDS. Everything else is exactly what the builders made, so
Envoy checks the real output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from controlplane.ir import Plan
from controlplane.xds import resources
from controlplane.xds.build import build_resources
from tests.golden.plan_yaml import load_plan

HERE = Path(__file__).parent
IN = HERE / "in"
OUT = HERE / "out"


def case_names() -> list[str]:
    return sorted(p.stem for p in IN.glob("*.yaml"))


def case_plan(case: str) -> Plan:
    return load_plan(IN / f"{case}.yaml")


def case_resources(case: str) -> dict[str, list[Any]]:
    return build_resources(case_plan(case))


def to_dict(msg: Any) -> dict[str, Any]:
    """Proto -> plain dict in Envoy's YAML spelling (snake_case, ``@type`` for Any)."""
    out: dict[str, Any] = json.loads(
        json_format.MessageToJson(msg, preserving_proto_field_name=True)
    )
    return out


def to_yaml(msgs: list[Any]) -> str:
    """Stable text: keys sorted, no line wrapping games."""
    return yaml.safe_dump([to_dict(m) for m in msgs], sort_keys=True, width=100)


def static_bootstrap(
    res: dict[str, list[Any]],
    admin_port: int,
    *,
    backend: Callable[[str], tuple[str, int]] | None = None,
    listen_port: int | None = None,
) -> dict[str, Any]:
    """One static Envoy config from built resources.

    ``backend(cluster_name)``, when given, replaces each cluster's endpoints with one
    healthy endpoint at that address; ``listen_port`` moves every listener to
    127.0.0.1 on that port (only sensible with one listener).
    """
    b = bootstrap_pb2.Bootstrap()
    b.node.id = "golden"
    b.node.cluster = "golden"
    b.admin.address.socket_address.address = "127.0.0.1"
    b.admin.address.socket_address.port_value = admin_port

    clas = {cla.cluster_name: cla for cla in res[resources.ENDPOINT]}
    for c in res[resources.CLUSTER]:
        s = cluster_pb2.Cluster()
        s.CopyFrom(c)
        s.ClearField("eds_cluster_config")
        s.type = cluster_pb2.Cluster.STATIC
        if backend is None:
            s.load_assignment.CopyFrom(clas[c.name])
        else:
            host, port = backend(c.name)
            s.load_assignment.CopyFrom(_one_endpoint(c.name, host, port))
        b.static_resources.clusters.append(s)

    routes = {r.name: r for r in res[resources.ROUTE]}
    for lis in res[resources.LISTENER]:
        s = listener_pb2.Listener()
        s.CopyFrom(lis)
        if listen_port is not None:
            s.address.socket_address.address = "127.0.0.1"
            s.address.socket_address.port_value = listen_port
        for chain in s.filter_chains:
            for f in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
                hcm.ClearField("rds")
                f.typed_config.Pack(hcm)
        b.static_resources.listeners.append(s)
    return to_dict(b)


def _one_endpoint(name: str, host: str, port: int) -> Any:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = cla.endpoints.add().lb_endpoints.add()
    ep.endpoint.address.socket_address.address = host
    ep.endpoint.address.socket_address.port_value = port
    return cla
