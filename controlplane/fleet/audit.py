"""The audit log: who changed what, when, from what to what; a capped Redis stream.

One entry per change of intent (rollouts, drains, placement, affinity, recorded serving
versions), of a node's desired models, and per GPU-fault clear, in ``aixds:v1:audit``
(``XADD ... MAXLEN ~ N``). Fields, all text: ``at`` (epoch seconds), ``who`` (a token's
name, or ``controlplane:<what>`` for a change the control plane made by itself),
``action``, ``target``, ``old`` and ``new`` (compact JSON of only the parts that changed,
see ``changes``), ``revision`` (the intent revision written; 0 for non-intent changes) and
``request_id``. The stream id (``<ms>-<seq>``) orders entries and is what ``since`` takes.

``RedisAuditLog`` appends on one client (where intent is written: the intent home) and
reads on another (this region's copy, which Redis replication keeps up to date);
``MemoryAuditLog`` behaves the same for tests.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis.asyncio as aioredis

from controlplane.fleet import schema

CONTROLPLANE_PREFIX = "controlplane:"
"""Who a change the control plane made by itself is by (``controlplane:auto-rollback``)."""
DEFAULT_MAX_LEN = 10_000
"""Entries kept (approximately: ``MAXLEN ~``)."""
STREAM_ID = re.compile(r"[0-9]{1,19}(-[0-9]{1,19})?")
"""What ``since`` may be: a stream id, ``<ms>`` or ``<ms>-<seq>``."""
MISSING = None
"""How a part that is absent on one side of a change is shown."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, and the request it came with (empty for the control plane)."""

    name: str
    request_id: str = ""


def controlplane(what: str) -> Actor:
    """The control plane itself, acting as ``what`` (``auto-rollback``, ...)."""
    return Actor(CONTROLPLANE_PREFIX + what)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    who: str
    action: str
    target: str
    old: Any
    """The changed parts before (JSON-ready); ``None`` where there was nothing."""
    new: Any
    """The same parts after; ``None`` where nothing is left."""
    revision: int = 0
    """The intent revision this change wrote; 0 for a change outside the intent."""
    request_id: str = ""
    id: str = ""
    """The stream id, once stored."""


def entry(
    by: Actor, action: str, target: str, old: Any, new: Any, *, revision: int = 0
) -> AuditEntry:
    """An entry made now by ``by``."""
    return AuditEntry(
        at=time.time(),
        who=by.name,
        action=action,
        target=target,
        old=old,
        new=new,
        revision=revision,
        request_id=by.request_id,
    )


def changes(old: Any, new: Any) -> tuple[Any, Any]:
    """The parts of two JSON values that differ, with their common parts cut away.

    Mappings are compared key by key (a key missing on one side shows as ``None``) and
    descended into; anything else (lists, numbers, strings) is shown whole.
    ``changes({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4}})``
    is ``({"b": {"d": 3}}, {"b": {"d": 4}})``.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        o: dict[str, Any] = {}
        n: dict[str, Any] = {}
        for k in sorted(old.keys() | new.keys()):
            a, b = old.get(k, MISSING), new.get(k, MISSING)
            if a != b:
                o[k], n[k] = changes(a, b)
        return o, n
    return old, new


def _json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def to_fields(e: AuditEntry) -> dict[str, str]:
    """The stream fields of ``e``."""
    return {
        "at": repr(e.at),
        "who": e.who,
        "action": e.action,
        "target": e.target,
        "old": _json(e.old),
        "new": _json(e.new),
        "revision": str(e.revision),
        "request_id": e.request_id,
    }


def from_fields(entry_id: str, f: dict[str, str]) -> AuditEntry:
    """An entry read back; a field that does not parse (written by hand) is kept as text."""

    def value(key: str) -> Any:
        raw = f.get(key, "null")
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def number(key: str, kind: type[float] | type[int]) -> Any:
        try:
            return kind(f.get(key, "0"))
        except ValueError:
            return kind(0)

    return AuditEntry(
        at=number("at", float),
        who=f.get("who", ""),
        action=f.get("action", ""),
        target=f.get("target", ""),
        old=value("old"),
        new=value("new"),
        revision=number("revision", int),
        request_id=f.get("request_id", ""),
        id=entry_id,
    )


class AuditLog(Protocol):
    async def append(self, e: AuditEntry) -> str:
        """Store ``e``; its stream id."""
        ...

    async def read(self, limit: int, since: str = "") -> list[AuditEntry]:
        """Oldest first: the ``limit`` entries after ``since`` (a stream id, exclusive),
        or without ``since`` the latest ``limit``."""
        ...


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class RedisAuditLog:
    """``aixds:v1:audit`` appended on ``write``, read on ``read`` (default: ``write``)."""

    def __init__(
        self,
        write: aioredis.Redis,
        read: aioredis.Redis | None = None,
        *,
        max_len: int = DEFAULT_MAX_LEN,
    ) -> None:
        self._w = write
        self._r = read if read is not None else write
        self.max_len = max_len

    async def append(self, e: AuditEntry) -> str:
        fields: Any = to_fields(e)
        return _text(
            await self._w.xadd(schema.AUDIT_KEY, fields, maxlen=self.max_len, approximate=True)
        )

    async def read(self, limit: int, since: str = "") -> list[AuditEntry]:
        rows: Any
        if since:
            rows = await self._r.xrange(schema.AUDIT_KEY, min=f"({since}", max="+", count=limit)
        else:
            rows = await self._r.xrevrange(schema.AUDIT_KEY, max="+", min="-", count=limit)
            rows = list(reversed(rows))
        return [from_fields(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in rows]


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryAuditLog:
    """In-memory ``AuditLog`` for tests; ``fail`` makes ``append`` raise it."""

    def __init__(self, max_len: int = DEFAULT_MAX_LEN) -> None:
        self.entries: list[AuditEntry] = []
        self.fail: Exception | None = None
        self.max_len = max_len
        self._seq = itertools.count()

    async def append(self, e: AuditEntry) -> str:
        if self.fail is not None:
            raise self.fail
        stored = replace(e, id=f"{int(e.at * 1000)}-{next(self._seq)}")
        self.entries = [*self.entries, stored][-self.max_len :]
        return stored.id

    async def read(self, limit: int, since: str = "") -> list[AuditEntry]:
        if since:
            after = _id_key(since)
            return [e for e in self.entries if _id_key(e.id) > after][:limit]
        return self.entries[-limit:] if limit else []
