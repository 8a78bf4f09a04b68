"""xDS type URLs and the ADS send order.

The order matters: clusters and their endpoints must reach Envoy before the listeners and
routes that use them (make-before-break), so a push walks ``SEND_ORDER`` front to back.
"""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

SEND_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""CDS, EDS, LDS, RDS: make-before-break. Do not reorder."""

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""CDS and LDS responses carry the full set (absent = deleted)."""

SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
