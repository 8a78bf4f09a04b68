"""Model servers found as Docker containers by label (``aixds agent --docker``).

A running container with the label ``aixds.kind`` is a model server:

- ``aixds.kind``: ``vllm``, ``sglang``, ``tgi``, ``triton``, ``trtllm`` or ``ollama``.
- ``aixds.port``: the container port of its API, e.g. ``8000`` (optional when the
  container publishes exactly one TCP port).
- ``aixds.name``: the replica name (optional; default ``<kind>-<host port>``).
- ``aixds.metrics-port``: Triton's metrics container port (optional; default 8002).
- ``aixds.model-version.<model>``: the version published for ``<model>``.

The agent probes the published port (``HostIp:HostPort`` of the binding, 127.0.0.1 when
bound to all addresses) and advertises ``--advertise`` if given, else ``HostIp`` if it
is a specific address, else the node's own address. A container in the host network
namespace is reached on ``aixds.port`` directly. The Docker SDK is synchronous, so a scan
runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import docker

from controlplane.agent.servers.discovery import (
    NAME_RE,
    WILDCARDS,
    ServerSpec,
    ip_literal,
    parse_kind,
    versions_of,
)
from controlplane.agent.servers.scrape import Notes
from controlplane.fleet.model import ServerKind

log = logging.getLogger(__name__)

LABEL_KIND = "aixds.kind"
LABEL_PORT = "aixds.port"
LABEL_NAME = "aixds.name"
LABEL_METRICS_PORT = "aixds.metrics-port"
LABEL_VERSION_PREFIX = "aixds.model-version."
TRITON_METRICS_PORT = 8002
MAX_CONTAINERS = 256
"""Containers looked at per scan; ``discovery.MAX_SERVERS`` of them are published."""


def spec_from_container(attrs: Mapping[str, Any], node_address: str) -> ServerSpec:
    """The server a container's inspect document describes; ``ValueError`` says why not."""
    config = attrs.get("Config") or {}
    labels: Mapping[str, str] = config.get("Labels") or {}
    cname = str(attrs.get("Name") or "").lstrip("/") or str(attrs.get("Id", "?"))[:12]
    if not (attrs.get("State") or {}).get("Running", False):
        raise ValueError("not running")
    kind = parse_kind(labels.get(LABEL_KIND, ""))
    name = labels.get(LABEL_NAME, "")
    if name and not NAME_RE.match(name):
        raise ValueError(f"label {LABEL_NAME}={name!r} must match {NAME_RE.pattern}")
    ports = _Ports(attrs)
    probe_host, host_port, address = ports.find(labels.get(LABEL_PORT), node_address)
    metrics_url = ""
    if kind is ServerKind.TRITON:
        m_host, m_port, _ = ports.find(
            labels.get(LABEL_METRICS_PORT, str(TRITON_METRICS_PORT)), node_address
        )
        metrics_url = f"http://{_url_host(m_host)}:{m_port}/metrics"
    versions = {
        k[len(LABEL_VERSION_PREFIX) :]: v
        for k, v in labels.items()
        if k.startswith(LABEL_VERSION_PREFIX) and len(k) > len(LABEL_VERSION_PREFIX)
    }
    return ServerSpec(
        kind=kind,
        url=f"http://{_url_host(probe_host)}:{host_port}",
        host=probe_host,
        port=host_port,
        name=name,
        versions=versions_of(versions),
        metrics_url=metrics_url,
        address=address,
        origin=f"docker:{cname}",
    )


class _Ports:
    """A container's published ports (``NetworkSettings.Ports``), or the host's network."""

    def __init__(self, attrs: Mapping[str, Any]) -> None:
        host_config = attrs.get("HostConfig") or {}
        self.host_network = host_config.get("NetworkMode") == "host"
        settings = attrs.get("NetworkSettings") or {}
        self.ports: Mapping[str, Any] = settings.get("Ports") or {}

    def find(self, label: str | None, node_address: str) -> tuple[str, int, str]:
        """(host to probe, host port, address to advertise) for container port ``label``."""
        if self.host_network:
            if not label:
                raise ValueError(f"host network: the {LABEL_PORT} label is required")
            return "127.0.0.1", _port(label), node_address
        key = self._key(label)
        bindings = [b for b in self.ports.get(key) or [] if isinstance(b, dict)]
        if not bindings:
            raise ValueError(f"container port {key} is not published")
        b = min(bindings, key=lambda b: ":" in str(b.get("HostIp", "")))  # IPv4 first
        host_ip, host_port = str(b.get("HostIp", "")), _port(b.get("HostPort"))
        if host_ip in WILDCARDS:
            return "127.0.0.1", host_port, node_address
        ip = ip_literal(host_ip)
        if ip is None:
            raise ValueError(f"binding of {key} has HostIp {host_ip!r}, not an IP")
        return ip, host_port, ip

    def _key(self, label: str | None) -> str:
        if label:
            return f"{_port(label)}/tcp"
        tcp = sorted(k for k, v in self.ports.items() if k.endswith("/tcp") and v)
        if len(tcp) != 1:
            raise ValueError(f"publishes {len(tcp)} TCP ports: set the {LABEL_PORT} label")
        return tcp[0]


def _port(value: Any) -> int:
    try:
        port = int(str(value).removesuffix("/tcp"))
    except ValueError:
        raise ValueError(f"bad port {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port {value!r}")
    return port


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def node_address() -> str:
    """This machine's outward IP address (the source address of its default route).

    Connecting a UDP socket sends nothing; it only picks the route. Falls back to the
    host name's address, then 127.0.0.1.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere for real
            return str(s.getsockname()[0])
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def connect(url: str | None) -> Any:
    """A Docker client: ``url`` (``unix://...``, ``tcp://HOST:PORT``) or the environment's."""
    if url:
        return docker.DockerClient(base_url=url, timeout=5)
    return docker.from_env(timeout=5)


class DockerSource:
    """Lists labelled containers; one client, made again after an error."""

    def __init__(self, connect: Callable[[], Any], address: str) -> None:
        self._connect = connect
        self._address = address
        self._client: Any = None
        self._notes = Notes("docker:", log)

    async def scan(self) -> list[ServerSpec]:
        return await asyncio.to_thread(self.scan_sync)

    def scan_sync(self) -> list[ServerSpec]:
        """Every labelled container that describes a server; raises if Docker fails."""
        try:
            if self._client is None:
                self._client = self._connect()
            found = self._client.containers.list(filters={"label": LABEL_KIND}, ignore_removed=True)
        except Exception:
            self.close()
            raise
        specs = []
        for c in found[:MAX_CONTAINERS]:
            cid = str(getattr(c, "id", "?"))[:12]
            try:
                specs.append(spec_from_container(c.attrs, self._address))
                self._notes.say(cid, "")
            except (ValueError, TypeError, AttributeError) as e:
                self._notes.say(cid, f"container {cid} skipped: {e}", logging.WARNING)
        return specs

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as e:  # closing a broken client must not hide the first error
                log.debug("closing the Docker client: %s", e)
