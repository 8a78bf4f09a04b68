"""EDS builder: one ``ClusterIR`` -> its ``ClusterLoadAssignment``.

Endpoints are grouped into localities by (priority, region, zone) and every list is sorted,
so the same IR always serializes to the same bytes (resource versions are content hashes).
Pure: imports protobuf messages only.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from controlplane.ir import ClusterIR, EndpointIR, Health

_HEALTH = {
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.DEGRADED: health_check_pb2.DEGRADED,
    Health.DRAINING: health_check_pb2.DRAINING,
    Health.UNHEALTHY: health_check_pb2.UNHEALTHY,
}


def _lb_endpoint(e: EndpointIR) -> Any:
    # Nested dicts: one constructor call instead of a dozen field writes, ~4x faster on
    # upb (2,000 endpoints: ~9 ms instead of ~35 ms).
    return endpoint_components_pb2.LbEndpoint(
        endpoint={
            "address": {"socket_address": {"address": e.address, "port_value": e.port}},
            # Shown by the admin /clusters page: which replica this host is.
            "hostname": e.replica_id,
        },
        health_status=_HEALTH[e.health],
        load_balancing_weight={"value": e.weight},
    )


def build_load_assignment(c: ClusterIR) -> Any:
    """The ``envoy.config.endpoint.v3.ClusterLoadAssignment`` for ``c`` (may be empty)."""
    groups: dict[tuple[int, str, str], list[EndpointIR]] = defaultdict(list)
    for e in c.endpoints:
        groups[(e.priority, e.region, e.zone)].append(e)

    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=c.name)
    for (priority, region, zone), eps in sorted(groups.items()):
        loc = endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=region, zone=zone),
            priority=priority,
        )
        ordered = sorted(eps, key=lambda e: (e.address, e.port, e.replica_id))
        loc.lb_endpoints.extend(_lb_endpoint(e) for e in ordered)
        cla.endpoints.append(loc)
    cla.policy.overprovisioning_factor.value = c.overprovisioning_factor
    return cla
