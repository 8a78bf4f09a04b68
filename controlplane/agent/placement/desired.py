"""Where the agent reads its node's desired-models key (the format: ``fleet.desired``).

``RedisDesired`` reads ``aixds:v1:desired:<node>`` (never writes it); ``MemoryDesired`` is
the in-memory stand-in for tests. Both implement ``DesiredSource``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import redis.asyncio as aioredis

from controlplane.fleet import schema
from controlplane.fleet.desired import (
    MAX_DESIRED,
    MAX_VALUE_BYTES,
    Desired,
    DesiredError,
    parse_desired,
)

__all__ = [
    "MAX_DESIRED",
    "MAX_VALUE_BYTES",
    "Desired",
    "DesiredError",
    "DesiredSource",
    "MemoryDesired",
    "RedisDesired",
    "parse_desired",
]


class DesiredSource(Protocol):
    """Reads a node's desired-models hash (field -> raw JSON)."""

    async def read(self) -> dict[str, str]:
        """The whole hash; raises if it cannot be read (the caller then does nothing)."""
        ...


class RedisDesired:
    """The desired key of one node in Redis. Read only: the agent never writes it."""

    def __init__(self, client: aioredis.Redis, node: str) -> None:
        self._r = client
        self.key = schema.desired_key(node)

    async def read(self) -> dict[str, str]:
        size = await self._r.hlen(self.key)
        if size > MAX_DESIRED:
            raise DesiredError(f"{self.key} has {size} fields, over {MAX_DESIRED}: ignored")
        doc = await self._r.hgetall(self.key)
        return {str(k): str(v) for k, v in doc.items()}


class MemoryDesired:
    """An in-memory desired hash, for tests of code that needs only ``DesiredSource``."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.fail: Exception | None = None

    def set(self, model: str, **value: Any) -> None:
        self.fields[model] = json.dumps(value)

    async def read(self) -> dict[str, str]:
        if self.fail is not None:
            raise self.fail
        return dict(self.fields)
