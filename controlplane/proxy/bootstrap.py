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

import ipaddress
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Role = Literal["edge", "sidecar"]
HostPort = tuple[str, int]
ROLES: tuple[Role, ...] = ("edge", "sidecar")

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "envoy" / "edge.yaml"
"""The template in a source checkout (or an editable install)."""


@dataclass(frozen=True, slots=True)
class XdsTls:
    """TLS from this Envoy to the control plane (the ADS and LRS streams)."""

    ca: Path
    """Verifies the control plane's certificate (absolute path: Envoy reads it)."""
    cert: Path | None = None
    key: Path | None = None
    """This Envoy's client certificate and key, for mutual TLS (``serve --client-ca``)."""
    server_name: str = ""
    """The name the control plane's certificate must carry (subject alternative name, and
    SNI when it is a DNS name); empty: any of the ``--xds`` hosts as given."""


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
    xds_tls: XdsTls | None = None
    """TLS to the control plane; None: plaintext."""

    @property
    def xds_host(self) -> str:
        """The first control plane's host (the template's ``XDS_HOST``)."""
        return self.xds[0][0]

    @property
    def xds_port(self) -> int:
        return self.xds[0][1]


TLS_PLACEHOLDER = "XDS_TLS"
"""The template variable that becomes the xDS cluster's ``transport_socket`` line."""


def xds_transport_socket(tls: XdsTls, xds_hosts: Sequence[str]) -> dict[str, Any]:
    """The xDS cluster's ``transport_socket``: an ``UpstreamTlsContext`` that checks the
    control plane's certificate against ``tls.ca`` and its name (``tls.server_name``, else
    any of the control planes' hosts), and presents this Envoy's certificate if it has one."""
    if (tls.cert is None) != (tls.key is None):
        raise ValueError("a client certificate needs its key (and the key its certificate)")
    names = [tls.server_name] if tls.server_name else list(dict.fromkeys(xds_hosts))
    common: dict[str, Any] = {
        # gRPC over TLS is HTTP/2 negotiated by ALPN: a gRPC server refuses a TLS client
        # that offers no "h2".
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": str(tls.ca)},
            "match_typed_subject_alt_names": [
                {"san_type": _san_type(n), "matcher": {"exact": n}} for n in names
            ],
        },
    }
    if tls.cert is not None and tls.key is not None:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(tls.cert)},
                "private_key": {"filename": str(tls.key)},
            }
        ]
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    # One SNI for the whole cluster: only when one DNS name is expected.
    if len(names) == 1 and _san_type(names[0]) == "DNS":
        context["sni"] = names[0]
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _san_type(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return "DNS"
    return "IP_ADDRESS"


def _tls_line(p: BootstrapParams) -> str:
    if p.xds_tls is None:
        return "# plaintext to the control plane (aixds envoy --ca/--tls-cert/--tls-key: TLS)"
    hosts = [host for host, _ in p.xds]
    return "transport_socket: " + json.dumps(xds_transport_socket(p.xds_tls, hosts))


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
    tmpl = string.Template(template)
    if p.xds_tls is not None and TLS_PLACEHOLDER not in tmpl.get_identifiers():
        raise ValueError(
            f"the bootstrap template has no ${{{TLS_PLACEHOLDER}}} line in its xds_cluster: "
            "TLS to the control plane was asked for and would be silently off"
        )
    q = json.dumps
    return tmpl.substitute(
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
        XDS_TLS=_tls_line(p),
    )


def _lb_endpoint(host: str, port: int) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
