"""Which model servers this node runs: ``--server`` flags, a config file, Docker containers.

``ServerSpec`` is one server to probe and publish. ``parse_server`` reads a flag,
``load_config`` an ``agent.yaml`` (README: "The node agent"), ``docker_source`` the labelled
containers. ``Discovery.scan`` merges them (flags first, then the file, then Docker; a
replica name seen twice keeps its first server) and gives each the IP address Envoy
should use. It is called again every ``--discover-interval``: servers come and go. A
source that fails keeps its last good answer, so a Docker or file hiccup removes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from controlplane.agent.servers.scrape import Notes
from controlplane.fleet.model import ServerKind

log = logging.getLogger(__name__)

MAX_SERVERS = 64
"""Most model servers one agent publishes; more are ignored (and logged)."""
MAX_CONFIG_BYTES = 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A replica name: the part after ``<node>/`` in the replica id."""
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
CONFIG_KEYS = frozenset({"kind", "url", "name", "versions", "metrics_url"})


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One model server: where to probe it and how to publish it."""

    kind: ServerKind
    url: str
    """Base URL the agent probes (and sends load/unload calls to)."""
    host: str
    """Host of ``url``, as written."""
    port: int
    """Port Envoy connects to: the URL's port, or a container's published host port."""
    name: str = ""
    """Replica name (id ``<node>/<name>``); empty: ``<kind>-<port>``."""
    versions: tuple[tuple[str, str], ...] = ()
    """Published version per model name, over what the server reports."""
    metrics_url: str = ""
    """Triton only: its metrics endpoint (default: the URL's host, port 8002)."""
    address: str = ""
    """IP address Envoy connects to; empty until ``Discovery`` resolves it."""
    origin: str = "flag"
    """Where it came from: ``flag``, ``config`` or ``docker:<container>``."""

    @property
    def replica_name(self) -> str:
        return self.name or f"{self.kind.value}-{self.port}"

    def version_map(self, overall: Mapping[str, str]) -> dict[str, str]:
        """``overall`` (``--model-version``) with this server's own versions on top."""
        return {**overall, **dict(self.versions)}


def parse_kind(text: str) -> ServerKind:
    try:
        return ServerKind(text.strip().lower())
    except ValueError:
        known = ", ".join(k.value for k in ServerKind)
        raise ValueError(f"unknown server kind {text!r} (known: {known})") from None


def parse_url(text: str) -> tuple[str, str, int]:
    """``http(s)://HOST[:PORT][/path]`` -> (normalized URL, host, port)."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as e:
        raise ValueError(f"bad URL {text!r}: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"URL must be http(s)://HOST[:PORT], got {text!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    return str(url).rstrip("/"), url.host, port


def parse_server(value: str) -> ServerSpec:
    """``KIND=URL`` -> ``ServerSpec``; ``ValueError`` with a reason a user can act on."""
    kind_s, sep, url_s = value.partition("=")
    if not sep or not url_s:
        raise ValueError(f"--server expects KIND=URL, got {value!r}")
    kind = parse_kind(kind_s)
    try:
        url, host, port = parse_url(url_s)
    except ValueError as e:
        raise ValueError(f"--server {value!r}: {e}") from None
    return ServerSpec(kind=kind, url=url, host=host, port=port)


def load_config(path: Path) -> list[ServerSpec]:
    """The servers of an ``agent.yaml``; ``ValueError`` names the file, entry and problem."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not YAML: {e}") from None
    if doc is None:  # an empty file: no servers (yet)
        doc = []
    if isinstance(doc, dict) and set(doc) <= {"servers"}:
        doc = doc.get("servers") or []
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a list of servers (or 'servers:' with one)")
    out = []
    for i, entry in enumerate(doc):
        try:
            out.append(_config_entry(entry))
        except ValueError as e:
            raise ValueError(f"{path}: servers[{i}]: {e}") from None
    return out


def _config_entry(entry: Any) -> ServerSpec:
    if not isinstance(entry, dict):
        raise ValueError("not a mapping")
    unknown = sorted(str(k) for k in set(entry) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    for key in ("kind", "url"):
        if not isinstance(entry.get(key), str):
            raise ValueError(f"{key!r} is required (a string)")
    url, host, port = parse_url(entry["url"])
    name = entry.get("name", "")
    if name and (not isinstance(name, str) or not NAME_RE.match(name)):
        raise ValueError(f"name {name!r} must match {NAME_RE.pattern}")
    metrics_url = entry.get("metrics_url", "")
    if metrics_url:
        if not isinstance(metrics_url, str):
            raise ValueError("metrics_url must be a URL")
        metrics_url = parse_url(metrics_url)[0]
    return ServerSpec(
        kind=parse_kind(entry["kind"]),
        url=url,
        host=host,
        port=port,
        name=name,
        versions=versions_of(entry.get("versions")),
        metrics_url=metrics_url,
        origin="config",
    )


def versions_of(doc: Any) -> tuple[tuple[str, str], ...]:
    """A ``{model: version}`` mapping, checked."""
    if doc is None:
        return ()
    if not isinstance(doc, dict):
        raise ValueError("versions must map model names to versions")
    out = []
    for model, version in doc.items():
        if not isinstance(model, str) or not model or not isinstance(version, str | int):
            raise ValueError(f"versions: bad entry {model!r}: {version!r}")
        if not str(version) or len(str(version)) > 128:
            raise ValueError(f"versions: {model!r} needs a version of 1 to 128 characters")
        out.append((model, str(version)))
    return tuple(out)


def ip_literal(host: str) -> str | None:
    """``host`` as a normalized IP address, or ``None`` if it is a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def resolve_sync(host: str) -> str:
    """An IP address for ``host`` (IPv4 preferred); ``ValueError`` if it has none."""
    ip = ip_literal(host)
    if ip is not None:
        return ip
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot resolve {host!r}: {e}") from None
    return _pick(host, [str(i[4][0]) for i in infos])


async def resolve(host: str) -> str:
    """``resolve_sync`` without blocking the event loop."""
    ip = ip_literal(host)
    if ip is not None:
        return ip
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot resolve {host!r}: {e}") from None
    return _pick(host, [str(i[4][0]) for i in infos])


def _pick(host: str, addrs: list[str]) -> str:
    v4 = [a for a in addrs if ":" not in a]
    if not (v4 or addrs):
        raise ValueError(f"{host!r} has no address")
    return (v4 or addrs)[0]


def check_unique(specs: Sequence[ServerSpec]) -> None:
    """Flags that name the same replica twice are an error (ports must differ)."""
    names = [s.replica_name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two --server flags give the same replica id {dupes}: ports must differ")


DockerScan = Callable[[], Awaitable[list[ServerSpec]]]


class Discovery:
    """Merges the sources into the current list of servers, each with its address."""

    def __init__(
        self,
        flags: Sequence[ServerSpec],
        config: Path | None = None,
        docker: DockerScan | None = None,
        advertise: str | None = None,
    ) -> None:
        self._flags = list(flags)
        self._config = config
        self._docker = docker
        self._advertise = advertise
        self._from_config: list[ServerSpec] = []
        self._from_docker: list[ServerSpec] = []
        self._notes = Notes("discovery:", log)

    @property
    def dynamic(self) -> bool:
        """Whether another scan can give another answer (a file or Docker is watched)."""
        return self._config is not None or self._docker is not None

    async def scan(self) -> list[ServerSpec]:
        if self._config is not None:
            try:
                self._from_config = await asyncio.to_thread(load_config, self._config)
                self._notes.say("config", "")
            except ValueError as e:
                self._notes.say("config", f"{e}; keeping the last good list", logging.ERROR)
        if self._docker is not None:
            try:
                self._from_docker = await self._docker()
                self._notes.say("docker", "")
            except Exception as e:  # the daemon is down, or answers nonsense
                msg = f"Docker: {type(e).__name__}: {e}; keeping the last good list"
                self._notes.say("docker", msg, logging.WARNING)
        out: dict[str, ServerSpec] = {}
        for spec in [*self._flags, *self._from_config, *self._from_docker]:
            first = out.get(spec.replica_name)
            if first is not None:
                if first != spec:
                    msg = f"{spec.origin} server {spec.url} has the name of {first.url}: ignored"
                    self._notes.say(f"dupe {spec.replica_name}", msg, logging.WARNING)
                continue
            if len(out) >= MAX_SERVERS:
                self._notes.say("limit", f"more than {MAX_SERVERS} servers: ignoring the rest")
                break
            placed = await self._place(spec)
            if placed is not None:
                out[spec.replica_name] = placed
        return list(out.values())

    async def _place(self, spec: ServerSpec) -> ServerSpec | None:
        """``spec`` with the address Envoy should use: ``--advertise``, else its own."""
        host = self._advertise or spec.address or spec.host
        if host in WILDCARDS:
            msg = f"{spec.url} is a wildcard address: give --advertise HOST"
            self._notes.say(f"addr {spec.replica_name}", msg, logging.ERROR)
            return None
        try:
            address = await resolve(host)
        except ValueError as e:
            self._notes.say(f"addr {spec.replica_name}", f"{spec.url}: {e}", logging.ERROR)
            return None
        self._notes.say(f"addr {spec.replica_name}", "")
        return replace(spec, address=address)
