"""A whole ``Plan`` -> xDS resources per type URL, each list sorted by resource name.

The one entry point the snapshot code needs; adding a resource type means one builder and
one line here (plus its place in ``resources.SEND_ORDER``). Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from controlplane.ir import Plan
from controlplane.xds import resources
from controlplane.xds.cluster import build_cluster
from controlplane.xds.endpoint import build_load_assignment
from controlplane.xds.listener import build_listener
from controlplane.xds.route import build_route_configuration


def build_resources(plan: Plan) -> dict[str, list[Any]]:
    """Clusters, load assignments, listeners and route configs, keyed by type URL."""
    clusters = sorted(plan.clusters, key=lambda c: c.name)
    return {
        resources.CLUSTER: [build_cluster(c) for c in clusters],
        resources.ENDPOINT: [build_load_assignment(c) for c in clusters],
        resources.LISTENER: [
            build_listener(lis) for lis in sorted(plan.listeners, key=lambda x: x.name)
        ],
        resources.ROUTE: [
            build_route_configuration(r) for r in sorted(plan.route_configs, key=lambda x: x.name)
        ],
    }


def resource_name(msg: Any) -> str:
    """The xDS resource name of a built message (``cluster_name`` for load assignments)."""
    name = getattr(msg, "cluster_name", "") or msg.name
    return str(name)
