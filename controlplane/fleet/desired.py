"""The desired-models key of a node: its format and its parser (shared by the agent, which
reads it, and the config API, which writes it).

``aixds:v1:desired:<node>`` (``schema.desired_key``) is a Redis hash written by the
control plane (or an operator) and only read by the node's agent. One field per model::

    HSET aixds:v1:desired:gpu-a1 sql-lora
        '{"server": "vllm-8000", "version": "v2", "path": "/adapters/sql-v2"}'

The value is a JSON object:

- ``server``: the replica name on this node (``<kind>-<port>`` or the configured name).
  May be left out when exactly one server on the node can load models.
- ``state``: ``"loaded"`` (default), ``"sleeping"`` (loaded, but the server may sleep:
  vLLM ``/sleep``, SGLang ``release_memory_occupation``; a server sleeps only when every
  managed model on it is ``sleeping``; kinds that cannot sleep keep it loaded) or
  ``"unloaded"``.
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
from typing import Any

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
    sleeping: bool = False
    """Loaded, and the server may sleep (only meaningful with ``loaded``)."""
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
    if state not in ("loaded", "unloaded", "sleeping"):
        raise DesiredError(f"state must be 'loaded', 'sleeping' or 'unloaded', got {state!r}")
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
        loaded=state != "unloaded",
        sleeping=state == "sleeping",
        version=_text(doc, "version", 128),
        path=_text(doc, "path", 4096),
        keep_alive=keep_alive,
    )


def _text(doc: dict[str, Any], key: str, limit: int) -> str:
    v = doc.get(key, "")
    if not isinstance(v, str) or len(v) > limit:
        raise DesiredError(f"{key!r} must be a string of at most {limit} characters")
    return v


def desired_json(d: Desired) -> str:
    """The hash value for ``d`` (defaults left out), as ``parse_desired`` reads it back."""
    doc: dict[str, str] = {}
    if d.server:
        doc["server"] = d.server
    if not d.loaded:
        doc["state"] = "unloaded"
    elif d.sleeping:
        doc["state"] = "sleeping"
    if d.version:
        doc["version"] = d.version
    if d.path:
        doc["path"] = d.path
    if d.keep_alive != "-1":
        doc["keep_alive"] = d.keep_alive
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
