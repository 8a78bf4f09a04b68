"""Immutable xDS snapshots: content-hash versions and responses serialized once.

A :class:`Snapshot` holds, per type URL, the resources one Envoy node group should have.
Each resource is packed into ``google.protobuf.Any`` and serialized exactly once, when the
snapshot is built; its version is a hash of those bytes. A type's version is a hash over
the sorted (name, resource version) pairs, so two control-plane replicas, or one that
restarted, compute the same versions from the same content.

Responses are assembled from the already-serialized resources by concatenating protobuf
fields (a message is the concatenation of its fields), and cached per (type, requested
name set): every stream of a node group that asks for the same set gets the same bytes,
and adds only its own nonce field (:meth:`Response.with_nonce`).

Pure: imports no I/O library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SEND_ORDER

__all__ = ["Resource", "Response", "Snapshot", "TypeResources", "resource_name"]

Message = Any
"""A generated protobuf message (xds-protos classes are untyped)."""
_K = TypeVar("_K")

_TYPE_PREFIX = "type.googleapis.com/"
_CLA = "envoy.config.endpoint.v3.ClusterLoadAssignment"
_HCM = _TYPE_PREFIX + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_RESPONSE_CACHE_MAX = 64
"""Responses remembered per type and kind (full, changes); more means subscriptions churn."""

# DiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_F_VERSION_INFO = 1
_F_RESOURCES = 2
_F_TYPE_URL = 4
_F_NONCE = 5
_NONCE_TAG = bytes((_F_NONCE << 3 | 2,))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _pack_any(type_url: str, value: bytes) -> bytes:
    """A serialized ``google.protobuf.Any`` (type_url = 1, value = 2), as protobuf writes it."""
    return _field(1, type_url.encode()) + (_field(2, value) if value else b"")


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _set_version(pairs: Iterable[tuple[str, str]]) -> str:
    """Version of a set of resources: a hash over its sorted (name, version) pairs."""
    h = hashlib.blake2b(digest_size=8)
    for name, version in sorted(pairs):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


def resource_name(msg: Message) -> str:
    """The xDS name of a resource: ``cluster_name`` for a ClusterLoadAssignment, else ``name``."""
    if msg.DESCRIPTOR.full_name == _CLA:
        return str(msg.cluster_name)
    return str(msg.name)


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource, serialized once as ``google.protobuf.Any``."""

    name: str
    version: str
    """Content hash of ``any_bytes``."""
    any_bytes: bytes


@dataclass(frozen=True, slots=True, eq=False)
class Response:
    """A serialized DiscoveryResponse without its nonce, shared by every stream that asks.

    Compared by identity: one object per (type, version, name set, base) is the point.
    """

    type_url: str
    version: str
    """Version of the whole requested set the receiver holds once it applied this."""
    names: tuple[str, ...]
    """Resource names in the body, sorted."""
    body: bytes
    held: Mapping[str, str]
    """Name -> resource version of the whole requested set after applying this; equals
    the body's resources unless this carries only changes (see
    :meth:`TypeResources.changes`)."""

    @property
    def complete(self) -> bool:
        """The body carries every resource of the requested set."""
        return len(self.names) == len(self.held)

    def with_nonce(self, nonce: str) -> bytes:
        """The full DiscoveryResponse bytes for one stream (the nonce is the only difference)."""
        n = nonce.encode()
        if len(n) < 0x80:
            return b"".join((self.body, _NONCE_TAG, bytes((len(n),)), n))
        return self.body + _field(_F_NONCE, n)


class TypeResources:
    """The resources of one type in a snapshot, with their version and cached responses."""

    __slots__ = ("_changes", "_responses", "refs", "resources", "type_url", "version")

    def __init__(self, type_url: str, resources: Mapping[str, Resource], refs: frozenset[str]):
        self.type_url = type_url
        self.resources: Mapping[str, Resource] = dict(sorted(resources.items()))
        self.version = _set_version((r.name, r.version) for r in self.resources.values())
        self.refs = refs
        """Names of resources of the next type that these reference (EDS names from
        clusters, route configuration names from listeners)."""
        self._responses: dict[frozenset[str] | None, Response] = {}
        self._changes: dict[tuple[frozenset[str] | None, str], Response] = {}

    def response(self, names: frozenset[str] | None) -> Response:
        """The response for a requested name set (``None`` = everything).

        Requested names missing here are left out. The version covers exactly the
        resources in the body, so it equals :attr:`version` when all are requested.
        """
        cached = self._responses.get(names)
        if cached is not None:
            return cached
        if names is None or names.issuperset(self.resources):
            full = self._responses.get(None)
            if full is None:
                full = self._build(list(self.resources.values()), self.version, None)
                _remember(self._responses, None, full)
            resp = full
        else:
            picked = [r for n, r in self.resources.items() if n in names]
            resp = self._build(picked, _set_version((r.name, r.version) for r in picked), None)
        _remember(self._responses, names, resp)
        return resp

    def changes(self, names: frozenset[str] | None, base: Response) -> Response:
        """Like :meth:`response`, but the body carries only the resources that differ from
        what ``base`` left the receiver holding (same version, same ``held``).

        For EDS and RDS only: Envoy updates just the resources a SotW response of those
        types carries, and keeps the others. Cached per (names, base version), so the
        streams of a group that were at the same version share the bytes.
        """
        full = self.response(names)
        if base.version == full.version:
            return full
        key = (names, base.version)
        cached = self._changes.get(key)
        if cached is not None:
            return cached
        old = base.held
        picked = [
            r for n, r in self.resources.items() if n in full.held and old.get(n) != r.version
        ]
        resp = full if len(picked) == len(full.held) else self._build(picked, full.version, full)
        _remember(self._changes, key, resp)
        return resp

    def _build(self, picked: Sequence[Resource], version: str, full: Response | None) -> Response:
        parts = [_field(_F_VERSION_INFO, version.encode())]
        parts.extend(_field(_F_RESOURCES, r.any_bytes) for r in picked)
        parts.append(_field(_F_TYPE_URL, self.type_url.encode()))
        held = full.held if full is not None else {r.name: r.version for r in picked}
        return Response(
            self.type_url, version, tuple(r.name for r in picked), b"".join(parts), held
        )


def _remember(cache: dict[_K, Response], key: _K, resp: Response) -> None:
    if len(cache) >= _RESPONSE_CACHE_MAX:
        cache.pop(next(iter(cache)))
    cache[key] = resp


def _eds_refs(clusters: Iterable[Message]) -> frozenset[str]:
    out = set()
    for c in clusters:
        if c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS:
            out.add(c.eds_cluster_config.service_name or c.name)
    return frozenset(out)


def _rds_refs(listeners: Iterable[Message]) -> frozenset[str]:
    out = set()
    for lst in listeners:
        chains = list(lst.filter_chains)
        if lst.HasField("default_filter_chain"):
            chains.append(lst.default_filter_chain)
        typed = [f.typed_config for chain in chains for f in chain.filters]
        if lst.HasField("api_listener"):
            typed.append(lst.api_listener.api_listener)
        for any_msg in typed:
            if any_msg.type_url != _HCM:
                continue
            hcm = http_connection_manager_pb2.HttpConnectionManager()
            hcm.ParseFromString(any_msg.value)
            if hcm.HasField("rds"):
                out.add(hcm.rds.route_config_name)
    return frozenset(out)


class Snapshot:
    """What one Envoy node group should have: every type in ``SEND_ORDER``, maybe more.

    Immutable. Build it with :meth:`from_resources`; compare versions, not objects.
    """

    __slots__ = ("_types",)

    def __init__(self, types: Mapping[str, TypeResources]) -> None:
        self._types: Mapping[str, TypeResources] = dict(types)

    @classmethod
    def from_resources(cls, resources: Mapping[str, Sequence[Message]]) -> Snapshot:
        """Pack and serialize each resource once. Types of ``SEND_ORDER`` left out are empty.

        Raises ``ValueError`` for a message whose type does not match its type URL, an
        empty name, or a name given twice.
        """
        types: dict[str, TypeResources] = {}
        for type_url in (*SEND_ORDER, *(t for t in resources if t not in SEND_ORDER)):
            msgs = resources.get(type_url, ())
            by_name: dict[str, Resource] = {}
            for msg in msgs:
                full_name = msg.DESCRIPTOR.full_name
                if _TYPE_PREFIX + full_name != type_url:
                    raise ValueError(f"{full_name} given as a resource of {type_url}")
                name = resource_name(msg)
                if not name:
                    raise ValueError(f"a {full_name} without a name")
                if name in by_name:
                    raise ValueError(f"{type_url}: resource {name!r} given twice")
                packed = _pack_any(type_url, msg.SerializeToString(deterministic=True))
                by_name[name] = Resource(name, _hash(packed), packed)
            if type_url == CLUSTER:
                refs = _eds_refs(msgs)
            elif type_url == LISTENER:
                refs = _rds_refs(msgs)
            else:
                refs = frozenset()
            types[type_url] = TypeResources(type_url, by_name, refs)
        return cls(types)

    @property
    def type_urls(self) -> tuple[str, ...]:
        """The types held, in send order."""
        return tuple(self._types)

    def version(self, type_url: str) -> str | None:
        """The version of a type, ``None`` if the snapshot does not hold that type."""
        t = self._types.get(type_url)
        return None if t is None else t.version

    @property
    def versions(self) -> dict[str, str]:
        """Type URL -> version, for every type held."""
        return {u: t.version for u, t in self._types.items()}

    def resources(self, type_url: str) -> Mapping[str, Resource]:
        t = self._types.get(type_url)
        return {} if t is None else t.resources

    def of_type(self, type_url: str) -> TypeResources | None:
        return self._types.get(type_url)

    def response(self, type_url: str, names: frozenset[str] | None = None) -> Response | None:
        """The cached response for ``names`` (``None`` = all), ``None`` for an unknown type."""
        t = self._types.get(type_url)
        return None if t is None else t.response(names)

    def changes(
        self, type_url: str, names: frozenset[str] | None, base: Response
    ) -> Response | None:
        """The cached response carrying only what changed since ``base`` (EDS/RDS)."""
        t = self._types.get(type_url)
        return None if t is None else t.changes(names, base)

    def consistent(self) -> list[str]:
        """Problems that would leave Envoy warming or holding dangling resources; [] if none.

        Every EDS name must be referenced by an EDS cluster and every EDS cluster must
        have its endpoints; every route configuration must be referenced by a listener
        and every listener's RDS name must exist (go-control-plane's ``Consistent()``).
        """
        problems: list[str] = []
        for parent, child, what in ((CLUSTER, ENDPOINT, "cluster"), (LISTENER, ROUTE, "listener")):
            p, c = self._types.get(parent), self._types.get(child)
            refs = p.refs if p is not None else frozenset()
            have = frozenset(c.resources) if c is not None else frozenset()
            short = "EDS" if child == ENDPOINT else "RDS"
            problems.extend(
                f"{short} resource {n!r} is referenced by no {what}" for n in sorted(have - refs)
            )
            problems.extend(
                f"a {what} references {short} resource {n!r}, which is missing"
                for n in sorted(refs - have)
            )
        return problems

    def reuse(self, previous: Snapshot | None) -> Snapshot:
        """This snapshot, sharing the types whose version equals ``previous``'s.

        Shared types keep their cached responses, so an unchanged type is never
        serialized again when a new snapshot is set.
        """
        if previous is None:
            return self
        types = {
            u: (p if (p := previous._types.get(u)) is not None and p.version == t.version else t)
            for u, t in self._types.items()
        }
        return Snapshot(types)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self.versions == other.versions

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.versions.items())))

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{u.rsplit('.', 1)[-1]}={t.version}({len(t.resources)})"
            for u, t in self._types.items()
        )
        return f"Snapshot({parts})"
