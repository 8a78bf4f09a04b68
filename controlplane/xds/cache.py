"""The snapshot cache: the latest snapshot per Envoy node group, and what each group NACKed.

``set_snapshot`` is the only write; it wakes every stream of that group, which then sends
the latest snapshot (never a queue of old ones). NACKed (type, version) pairs are kept per
group so that a version Envoy rejected is never sent to that group again, also after a
reconnect. The ADS server (``ads``) is the only reader besides the API.

Everything here runs on one asyncio event loop: call ``set_snapshot`` from that loop's
thread (from another thread use ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.xds.snapshot import Snapshot

__all__ = [
    "MAX_NODE_FIELD_CHARS",
    "MAX_NODE_METADATA_BYTES",
    "GroupOf",
    "NackRecord",
    "NewGroupHook",
    "NodeInfo",
    "SnapshotCache",
    "Watch",
    "default_group_of",
    "node_problem",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Who an Envoy is, from the ``node`` of its first discovery request."""

    node_id: str
    cluster: str = ""
    region: str = ""
    zone: str = ""
    role: str = "edge"
    """From node metadata ``role``; ``edge`` when absent."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The node metadata as plain JSON data."""

    @classmethod
    def from_node(cls, node: Any) -> NodeInfo:
        """From an ``envoy.config.core.v3.Node``."""
        meta = _struct_to_dict(node.metadata)
        role = meta.get("role")
        return cls(
            node_id=node.id,
            cluster=node.cluster,
            region=node.locality.region,
            zone=node.locality.zone,
            role=role if isinstance(role, str) and role else "edge",
            metadata=meta,
        )


def _value_to_py(v: Any) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return _struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [_value_to_py(x) for x in v.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(v, kind)


def _struct_to_dict(s: Any) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as plain JSON data."""
    return {k: _value_to_py(v) for k, v in s.fields.items()}


MAX_NODE_METADATA_BYTES = 64 * 1024
"""Largest ``node.metadata`` accepted (serialized); aixds's bootstrap sends a few fields."""

MAX_NODE_FIELD_CHARS = 1024
"""Longest ``node.id``, ``node.cluster``, locality region / zone and metadata ``role``:
they name streams, groups and metric labels."""


def node_problem(node: Any) -> str | None:
    """Why an ``envoy.config.core.v3.Node`` cannot identify a stream, or ``None``."""
    if not node.id:
        return "node.id is empty"
    fields = {
        "node.id": node.id,
        "node.cluster": node.cluster,
        "node.locality.region": node.locality.region,
        "node.locality.zone": node.locality.zone,
    }
    for name, value in fields.items():
        if len(value) > MAX_NODE_FIELD_CHARS:
            return f"{name} is {len(value)} characters, over {MAX_NODE_FIELD_CHARS}"
    size = node.metadata.ByteSize()
    if size > MAX_NODE_METADATA_BYTES:
        return f"node.metadata is {size} bytes, over {MAX_NODE_METADATA_BYTES}"
    role = node.metadata.fields.get("role")
    if role is not None and len(role.string_value) > MAX_NODE_FIELD_CHARS:
        return f"node metadata role is over {MAX_NODE_FIELD_CHARS} characters"
    return None


GroupOf = Callable[[NodeInfo], str]
NewGroupHook = Callable[[str, NodeInfo], None]


def default_group_of(node: NodeInfo) -> str:
    """Envoys of one role in one region get the same configuration."""
    return f"{node.role}/{node.region}"


@dataclass(frozen=True, slots=True)
class NackRecord:
    """One version of one type that an Envoy of a group rejected."""

    group: str
    type_url: str
    version: str
    node_id: str
    error_detail: str
    at: float
    """Wall-clock time (``time.time()``)."""


@dataclass(frozen=True, slots=True)
class _Published:
    snapshot: Snapshot
    changed_at: Mapping[str, float]
    """Per type URL: ``time.monotonic()`` of the ``set_snapshot`` that set its version."""


class Watch:
    """A stream's registration for one group's snapshots; ``cancel()`` when the stream ends."""

    __slots__ = ("_cache", "_wake", "group")

    def __init__(self, cache: SnapshotCache, group: str, wake: Callable[[], None]) -> None:
        self._cache = cache
        self.group = group
        self._wake = wake

    def cancel(self) -> None:
        watchers = self._cache._watchers.get(self.group)
        if watchers is not None:
            watchers.discard(self._wake)
            if not watchers:
                del self._cache._watchers[self.group]


class SnapshotCache:
    """Latest snapshot per group, stream wake-ups, and per-group NACK records."""

    def __init__(
        self,
        *,
        group_of: GroupOf = default_group_of,
        on_new_group: NewGroupHook | None = None,
        max_nacks_per_group: int = 256,
    ) -> None:
        self.group_of = group_of
        """Maps an Envoy to its node group; injectable."""
        self.on_new_group = on_new_group
        """Called the first time a stream of a group with no snapshot connects."""
        self._max_nacks = max_nacks_per_group
        self._published: dict[str, _Published] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._nacks: dict[str, OrderedDict[tuple[str, str], NackRecord]] = {}
        self._groups: dict[str, NodeInfo] = {}

    # -- writes ----------------------------------------------------------------------------

    def set_snapshot(self, group: str, snap: Snapshot) -> None:
        """Publish ``snap`` for ``group`` and wake that group's streams."""
        now = time.monotonic()
        prev = self._published.get(group)
        if prev is None:
            changed = dict.fromkeys(snap.type_urls, now)
        else:
            snap = snap.reuse(prev.snapshot)
            old = prev.snapshot
            changed = {
                u: (prev.changed_at[u] if old.version(u) == snap.version(u) else now)
                for u in snap.type_urls
            }
        self._published[group] = _Published(snap, changed)
        for wake in tuple(self._watchers.get(group, ())):
            wake()

    def record_nack(
        self, group: str, type_url: str, version: str, node_id: str, error_detail: str
    ) -> NackRecord:
        """Remember that ``version`` of ``type_url`` was rejected by an Envoy of ``group``."""
        rec = NackRecord(group, type_url, version, node_id, error_detail, time.time())
        per_group = self._nacks.setdefault(group, OrderedDict())
        per_group[(type_url, version)] = rec
        per_group.move_to_end((type_url, version))
        while len(per_group) > self._max_nacks:
            per_group.popitem(last=False)
        return rec

    # -- reads -----------------------------------------------------------------------------

    def get(self, group: str) -> Snapshot | None:
        p = self._published.get(group)
        return None if p is None else p.snapshot

    def changed_at(self, group: str, type_url: str) -> float | None:
        """``time.monotonic()`` when the group's current version of ``type_url`` was set."""
        p = self._published.get(group)
        return None if p is None else p.changed_at.get(type_url)

    def is_nacked(self, group: str, type_url: str, version: str) -> bool:
        per_group = self._nacks.get(group)
        return per_group is not None and (type_url, version) in per_group

    def nacks(self, group: str) -> list[NackRecord]:
        """The group's NACK records, oldest first."""
        return list(self._nacks.get(group, {}).values())

    def groups(self) -> dict[str, NodeInfo]:
        """Every group a stream connected for, with the first Envoy seen of it."""
        return dict(self._groups)

    async def wait_for_snapshot(self, group: str, after: Snapshot | None = None) -> Snapshot:
        """The group's snapshot once it is set and differs from ``after`` (by versions).

        Bound the wait with ``asyncio.timeout()``.
        """
        current = self.get(group)
        if current is not None and current != after:
            return current
        changed = asyncio.Event()
        watch = self._add_watcher(group, changed.set)
        try:
            while True:
                await changed.wait()
                changed.clear()
                current = self.get(group)
                if current is not None and current != after:
                    return current
        finally:
            watch.cancel()

    # -- streams ---------------------------------------------------------------------------

    def watch(self, node: NodeInfo, wake: Callable[[], None]) -> Watch:
        """Register a stream of ``node``: ``wake()`` is called on each new snapshot.

        Calls ``on_new_group`` (after registering, so a snapshot it sets at once wakes the
        stream) the first time a stream of a group that has no snapshot connects.
        """
        group = self.group_of(node)
        watch = self._add_watcher(group, wake)
        if group not in self._groups:
            self._groups[group] = node
            if group not in self._published and self.on_new_group is not None:
                try:
                    self.on_new_group(group, node)
                except Exception:
                    log.exception("on_new_group(%r) failed", group)
        return watch

    def _add_watcher(self, group: str, wake: Callable[[], None]) -> Watch:
        self._watchers.setdefault(group, set()).add(wake)
        return Watch(self, group, wake)
