"""The desired-models key of a node: its format, its parser, and where the agent reads it.

``aixds:v1:desired:<node>`` (``schema.desired_key``) is a Redis hash written by the
control plane (or an operator) and only read by the node's agent. One field per model::

    HSET aixds:v1:desired:gpu-a1 sql-lora
        '{"server": "vllm-8000", "version": "v2", "path": "/adapters/sql-v2"}'

The value is a JSON object:

- ``server``: the replica name on this node (``<kind>-<port>`` or the configured name).
  May be left out when exactly one server on the node can load models.
- ``state``: ``"loaded"`` (default) or ``"unloaded"``.
- ``version``: the version published for the model (default: what the server reports).
- ``path``: vLLM only, required there: the LoRA adapter's ``lora_path``.
- ``keep_alive``: Ollama only: ``keep_alive`` of the load (default ``-1``, keep loaded).

A model without a field is not managed: the agent neither loads nor unloads it. Unloading
takes an explicit ``"state": "unloaded"``, so a missing or emptied key (a Redis restart
without persistence) never unloads anything. Fields past ``MAX_DESIRED`` are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from controlplane.fleet import schema

MAX_DESIRED = 256
"""Most fields the agent accepts in its desired key (a larger hash is ignored whole)."""
MAX_VALUE_BYTES = 4096
KEYS = frozenset({"server", "state", "version", "path", "keep_alive"})
_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$|^-?\d+$")


class DesiredError(ValueError):
    """A desired-models field that does not follow the format."""


@dataclass(frozen=True, slots=True)
class Desired:
    """What the control plane wants for one model on this node."""

    model: str
    server: str = ""
    loaded: bool = True
    version: str = ""
    path: str = ""
    keep_alive: str = "-1"


def parse_desired(model: str, raw: str) -> Desired:
    """One field of the hash; ``DesiredError`` says what is wrong with it."""
    if not model or len(model) > 1024:
        raise DesiredError("model name must be 1 to 1024 characters")
    if len(raw) > MAX_VALUE_BYTES:
        raise DesiredError(f"value is over {MAX_VALUE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DesiredError("value is not JSON") from None
    if not isinstance(doc, dict):
        raise DesiredError("value is not a JSON object")
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise DesiredError(f"unknown key(s) {unknown}; known: {sorted(KEYS)}")
    state = doc.get("state", "loaded")
    if state not in ("loaded", "unloaded"):
        raise DesiredError(f"state must be 'loaded' or 'unloaded', got {state!r}")
    keep_alive = doc.get("keep_alive", "-1")
    if isinstance(keep_alive, int) and not isinstance(keep_alive, bool):
        keep_alive = str(keep_alive)
    if not isinstance(keep_alive, str) or not _DURATION.match(keep_alive):
        raise DesiredError(
            f"keep_alive must be seconds or a duration like '30m', got {keep_alive!r}"
        )
    return Desired(
        model=model,
        server=_text(doc, "server", 100),
        loaded=state == "loaded",
        version=_text(doc, "version", 128),
        path=_text(doc, "path", 4096),
        keep_alive=keep_alive,
    )


def _text(doc: dict[str, Any], key: str, limit: int) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise DesiredError(f"{key!r} must be a string of at most {limit} characters")
    return v


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
