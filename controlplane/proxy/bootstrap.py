"""Render the Envoy bootstrap template: ``BootstrapParams`` + template text -> YAML text.

Pure (no file or process access): the runner reads the template and writes the result.
String values are substituted JSON-quoted, so YAML never reinterprets them (a region
``no`` stays a string) and no value can inject YAML structure.

Several control planes (``--xds a:1,b:2,c:3``) become the endpoints of the one static
``xds_cluster`` (``XDS_LB_ENDPOINTS``, a JSON flow list): Envoy's gRPC client picks one
through the cluster's load balancer and, when its stream fails, the next attempt picks
again (see docs/control-plane-ha.md for what was measured).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Role = Literal["edge", "sidecar"]
HostPort = tuple[str, int]
ROLES: tuple[Role, ...] = ("edge", "sidecar")

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "envoy" / "edge.yaml"
"""The template in a source checkout (or an editable install)."""


@dataclass(frozen=True, slots=True)
class BootstrapParams:
    """What one Envoy needs to find the control plane and describe itself."""

    node_id: str
    """Unique per Envoy process; the control plane tracks ACKs per node id."""
    region: str
    """Locality region: the control plane makes it priority 0 for this Envoy."""
    xds: tuple[HostPort, ...]
    """The control planes' ADS addresses (one or more), in the order given."""
    listen_address: str
    """Where the control plane should put this Envoy's listener (sent as node metadata)."""
    listen_port: int
    admin_address: str
    admin_port: int
    zone: str = ""
    role: Role = "edge"
    node_cluster: str = ""
    """Envoy's ``node.cluster``; ``aixds-<role>`` when empty."""

    @property
    def xds_host(self) -> str:
        """The first control plane's host (the template's ``XDS_HOST``)."""
        return self.xds[0][0]

    @property
    def xds_port(self) -> int:
        return self.xds[0][1]


def render_bootstrap(p: BootstrapParams, template: str) -> str:
    """The bootstrap YAML for ``p`` from ``template`` (``${NAME}`` placeholders)."""
    if p.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {p.role!r}")
    if not p.xds:
        raise ValueError("at least one control plane (xds HOST:PORT) is needed")
    if len(set(p.xds)) != len(p.xds):
        raise ValueError(f"a control plane is named twice: {p.xds}")
    ports = [("xds", port) for _, port in p.xds]
    for name, port in (*ports, ("listen", p.listen_port), ("admin", p.admin_port)):
        if not 0 <= port < 65536:
            raise ValueError(f"{name} port out of range: {port}")
    if any(not host for host, _ in p.xds):
        raise ValueError("a control plane's host must not be empty")
    if not p.node_id or not p.region:
        raise ValueError("node_id and region must not be empty")
    q = json.dumps
    return string.Template(template).substitute(
        NODE_ID=q(p.node_id),
        NODE_CLUSTER=q(p.node_cluster or f"aixds-{p.role}"),
        REGION=q(p.region),
        ZONE=q(p.zone),
        ROLE=q(p.role),
        LISTEN_ADDRESS=q(p.listen_address),
        LISTEN_PORT=str(int(p.listen_port)),
        ADMIN_ADDRESS=q(p.admin_address),
        ADMIN_PORT=str(int(p.admin_port)),
        XDS_HOST=q(p.xds_host),
        XDS_PORT=str(int(p.xds_port)),
        XDS_LB_ENDPOINTS=q([_lb_endpoint(host, port) for host, port in p.xds]),
    )


def _lb_endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
