"""Render the Envoy bootstrap template: ``BootstrapParams`` + template text -> YAML text.

Pure (no file or process access): the runner reads the template and writes the result.
String values are substituted JSON-quoted, so YAML never reinterprets them (a region
``no`` stays a string) and no value can inject YAML structure.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["edge", "sidecar"]
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
    xds_host: str
    xds_port: int
    listen_address: str
    """Where the control plane should put this Envoy's listener (sent as node metadata)."""
    listen_port: int
    admin_address: str
    admin_port: int
    zone: str = ""
    role: Role = "edge"
    node_cluster: str = ""
    """Envoy's ``node.cluster``; ``aixds-<role>`` when empty."""


def render_bootstrap(p: BootstrapParams, template: str) -> str:
    """The bootstrap YAML for ``p`` from ``template`` (``${NAME}`` placeholders)."""
    if p.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {p.role!r}")
    for name, port in (("xds", p.xds_port), ("listen", p.listen_port), ("admin", p.admin_port)):
        if not 0 <= port < 65536:
            raise ValueError(f"{name} port out of range: {port}")
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
    )
