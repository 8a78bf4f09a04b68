"""Validating JSON codec for replica records.

``decode_record`` never trusts its input: any missing field, wrong type, out-of-range or
non-finite number raises ``RecordError`` with a reason, so a malformed record is skipped
by the caller (and counted) instead of reaching ``decide()``. The one exception is
``load.prefix_cache_hit_rate``, optional and informative: absent or unusable (not a finite
number) it decodes as ``None``, and a number outside 0..1 is clamped into it, so that a
replica never disappears over it.
"""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any

from controlplane.fleet.model import (
    MAX_ERROR_CHARS,
    AvailableModel,
    GpuStats,
    LoadStats,
    ModelFailure,
    ModelInfo,
    ModelState,
    ReplicaRecord,
    ServerKind,
)

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 256 * 1024
MAX_MODELS = 256
MAX_GPUS = 64
MAX_HOST_BYTES = 1 << 50
"""1 PiB: more host memory than any node has."""


class RecordError(ValueError):
    """A replica record that does not follow schema v1."""


def encode_record(rec: ReplicaRecord) -> str:
    load: dict[str, Any] = {
        "queue_waiting": rec.load.queue_waiting,
        "running": rec.load.running,
        "kv_cache_usage": rec.load.kv_cache_usage,
    }
    if rec.load.prefix_cache_hit_rate is not None:  # optional: older readers ignore it
        load["prefix_cache_hit_rate"] = rec.load.prefix_cache_hit_rate
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "replica_id": rec.replica_id,
        "node": rec.node,
        "region": rec.region,
        "zone": rec.zone,
        "address": rec.address,
        "port": rec.port,
        "server_kind": rec.server_kind.value,
        "models": [
            {"name": m.name, "version": m.version, "state": m.state.value} for m in rec.models
        ],
        "load": load,
        "gpus": [
            {
                "index": g.index,
                "uuid": g.uuid,
                "util_gpu": g.util_gpu,
                "util_mem": g.util_mem,
                "mem_used_bytes": g.mem_used_bytes,
                "mem_total_bytes": g.mem_total_bytes,
                "temperature_c": g.temperature_c,
                "power_w": g.power_w,
                "power_limit_w": g.power_limit_w,
                "throttled": g.throttled,
                "faulty": g.faulty,
                "fault_reason": g.fault_reason,
            }
            for g in rec.gpus
        ],
        "timestamp": rec.timestamp,
        "speed": rec.speed,
        "capacity": rec.capacity,
        "draining": rec.draining,
    }
    if not rec.speed_measured:  # optional: older readers take the defaults as measured
        doc["speed_measured"] = False
    if rec.failures:  # optional: older readers ignore the key
        doc["failures"] = [
            {
                "name": f.name,
                "version": f.version,
                "op": f.op,
                "error": f.error,
                "failures": f.failures,
                "permanent": f.permanent,
            }
            for f in rec.failures
        ]
    if rec.available:  # optional: older readers ignore the key
        doc["available"] = [
            {
                "name": a.name,
                "version": a.version,
                "mem_bytes": a.mem_bytes,
                "load_s": a.load_s,
                "wake_s": a.wake_s,
            }
            for a in rec.available
        ]
    if rec.sleeping:
        doc["sleeping"] = True
    if rec.host_mem_bytes:  # optional: older readers ignore the key
        doc["host_mem_bytes"] = rec.host_mem_bytes
    if rec.lost:  # optional: older readers ignore the key
        doc["lost"] = [{"name": n, "version": v} for n, v in rec.lost]
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def decode_record(raw: str | bytes) -> ReplicaRecord:
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"record is {len(raw)} bytes, over {MAX_RECORD_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RecordError(f"not JSON: {e}") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise RecordError("not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise RecordError("record is not a JSON object")
    if doc.get("v") != SCHEMA_VERSION:
        raise RecordError(f"schema version {doc.get('v')!r}, expected {SCHEMA_VERSION}")
    models_raw = _list(doc, "models", MAX_MODELS)
    gpus_raw = _list(doc, "gpus", MAX_GPUS, required=False)
    failures_raw = _list(doc, "failures", MAX_MODELS, required=False)
    available_raw = _list(doc, "available", MAX_MODELS, required=False)
    lost_raw = _list(doc, "lost", MAX_MODELS, required=False)
    load = _obj(doc, "load", required=False)
    try:
        kind = ServerKind(_str(doc, "server_kind"))
    except ValueError:
        raise RecordError(f"unknown server_kind {doc.get('server_kind')!r}") from None
    return ReplicaRecord(
        replica_id=_str(doc, "replica_id"),
        node=_str(doc, "node"),
        region=_str(doc, "region"),
        zone=_str(doc, "zone", allow_empty=True),
        address=_ip(doc, "address"),
        port=int(_num(doc, "port", lo=1, hi=65535, integer=True)),
        server_kind=kind,
        models=tuple(_model(m) for m in models_raw),
        load=LoadStats(
            queue_waiting=_num(load, "queue_waiting", lo=0, hi=1e7, default=0.0),
            running=_num(load, "running", lo=0, hi=1e7, default=0.0),
            kv_cache_usage=_num(load, "kv_cache_usage", lo=0, hi=1, default=0.0),
            prefix_cache_hit_rate=_fraction_or_none(load.get("prefix_cache_hit_rate")),
        ),
        gpus=tuple(_gpu(g) for g in gpus_raw),
        timestamp=_num(doc, "timestamp", lo=0, hi=1e11),
        speed=_num(doc, "speed", lo=0.001, hi=1000, default=1.0),
        capacity=_num(doc, "capacity", lo=0.001, hi=1000, default=1.0),
        speed_measured=_bool(doc, "speed_measured", default=True),
        draining=_bool(doc, "draining", default=False),
        failures=tuple(_failure(f) for f in failures_raw),
        available=tuple(_available(a) for a in available_raw),
        sleeping=_bool(doc, "sleeping", default=False),
        host_mem_bytes=int(
            _num(doc, "host_mem_bytes", lo=0, hi=MAX_HOST_BYTES, default=0, integer=True)
        ),
        lost=tuple(_lost(m) for m in lost_raw),
    )


def _ip(d: dict[str, Any], key: str) -> str:
    """An IP literal: Envoy's EDS rejects host names (the whole update would be NACKed)."""
    v = _str(d, key)
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise RecordError(f"field {key!r}={v!r} is not an IP address") from None
    return v


def _lost(m: Any) -> tuple[str, str]:
    if not isinstance(m, dict):
        raise RecordError("lost[] entry is not an object")
    return _str(m, "name"), _str(m, "version")


def _model(m: Any) -> ModelInfo:
    if not isinstance(m, dict):
        raise RecordError("models[] entry is not an object")
    try:
        state = ModelState(_str(m, "state"))
    except ValueError:
        raise RecordError(f"unknown model state {m.get('state')!r}") from None
    return ModelInfo(name=_str(m, "name"), version=_str(m, "version"), state=state)


def _available(a: Any) -> AvailableModel:
    if not isinstance(a, dict):
        raise RecordError("available[] entry is not an object")
    return AvailableModel(
        name=_str(a, "name"),
        version=_str(a, "version", allow_empty=True, default=""),
        mem_bytes=int(_num(a, "mem_bytes", lo=0, hi=2**50, default=0, integer=True)),
        load_s=_num(a, "load_s", lo=0, hi=1e6, default=0.0),
        wake_s=_num(a, "wake_s", lo=0, hi=1e6, default=0.0),
    )


def _failure(f: Any) -> ModelFailure:
    if not isinstance(f, dict):
        raise RecordError("failures[] entry is not an object")
    op = _str(f, "op")
    if op not in ("load", "unload"):
        raise RecordError(f"failures[].op {op!r} is not load or unload")
    error = _str(f, "error", allow_empty=True)
    if len(error) > MAX_ERROR_CHARS:
        raise RecordError(f"failures[].error is over {MAX_ERROR_CHARS} characters")
    return ModelFailure(
        name=_str(f, "name"),
        version=_str(f, "version", allow_empty=True),
        op=op,
        error=error,
        failures=int(_num(f, "failures", lo=1, hi=1e9, integer=True, default=1)),
        permanent=_bool(f, "permanent", default=False),
    )


def _gpu(g: Any) -> GpuStats:
    if not isinstance(g, dict):
        raise RecordError("gpus[] entry is not an object")
    return GpuStats(
        index=int(_num(g, "index", lo=0, hi=1024, integer=True)),
        uuid=_str(g, "uuid", allow_empty=True, default=""),
        util_gpu=_num(g, "util_gpu", lo=0, hi=1, default=0.0),
        util_mem=_num(g, "util_mem", lo=0, hi=1, default=0.0),
        mem_used_bytes=int(_num(g, "mem_used_bytes", lo=0, hi=2**50, default=0, integer=True)),
        mem_total_bytes=int(_num(g, "mem_total_bytes", lo=0, hi=2**50, default=0, integer=True)),
        temperature_c=_num(g, "temperature_c", lo=-50, hi=200, default=0.0),
        power_w=_num(g, "power_w", lo=0, hi=1e5, default=0.0),
        power_limit_w=_num(g, "power_limit_w", lo=0, hi=1e5, default=0.0),
        throttled=_bool(g, "throttled", default=False),
        faulty=_bool(g, "faulty", default=False),
        fault_reason=_str(g, "fault_reason", allow_empty=True, default=""),
    )


def _fraction_or_none(v: Any) -> float | None:
    """An optional share: a finite number clamped into 0..1, anything else ``None``."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond any float
        return None
    return min(1.0, max(0.0, f)) if math.isfinite(f) else None


_MISSING = object()


def _str(d: dict[str, Any], key: str, *, allow_empty: bool = False, default: Any = _MISSING) -> str:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if default is not _MISSING:
            return str(default)
        raise RecordError(f"missing field {key!r}")
    if not isinstance(v, str):
        raise RecordError(f"field {key!r} is not a string")
    if not v and not allow_empty:
        raise RecordError(f"field {key!r} is empty")
    if len(v) > 1024:
        raise RecordError(f"field {key!r} is too long")
    return v


def _num(
    d: dict[str, Any],
    key: str,
    *,
    lo: float,
    hi: float,
    default: Any = _MISSING,
    integer: bool = False,
) -> float:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if default is not _MISSING:
            return float(default)
        raise RecordError(f"missing field {key!r}")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RecordError(f"field {key!r} is not a number")
    if integer and not isinstance(v, int):
        raise RecordError(f"field {key!r} is not an integer")
    try:
        f = float(v)
    except OverflowError:  # JSON allows integers beyond any float
        raise RecordError(f"field {key!r} is out of range [{lo}, {hi}]") from None
    if not math.isfinite(f) or f < lo or f > hi:
        raise RecordError(f"field {key!r}={v!r} out of range [{lo}, {hi}]")
    return f


def _bool(d: dict[str, Any], key: str, *, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise RecordError(f"field {key!r} is not a boolean")
    return v


def _list(d: dict[str, Any], key: str, limit: int, *, required: bool = True) -> list[Any]:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if not required:
            return []
        raise RecordError(f"missing field {key!r}")
    if not isinstance(v, list):
        raise RecordError(f"field {key!r} is not a list")
    if len(v) > limit:
        raise RecordError(f"field {key!r} has {len(v)} entries, over {limit}")
    return v


def _obj(d: dict[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        if not required:
            return {}
        raise RecordError(f"missing field {key!r}")
    if not isinstance(v, dict):
        raise RecordError(f"field {key!r} is not an object")
    return v
