"""The fake server's runtime switches (``POST /control``): what may change, and checks.

A control document is a JSON object such as ``{"error_rate": 0.3, "speed": 0.5,
"stall": true}``, ``{"external_load": 0.3}``, ``{"gpu_throttle": true}``,
``{"gpu_fault": "xid 79"}``, ``{"prefix_caching": false}``, ``{"lora_fail_loads": 2}``,
``{"load_time_ms": 5000, "wake_ms": 300}`` or
``{"crash": true}``. It is
checked as a whole before anything changes, so a bad document changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.sim.engine import MAX_EXTERNAL_LOAD
from controlplane.sim.simgpu import parse_fault


class ControlError(ValueError):
    """A control document that names an unknown switch or gives a bad value."""


@dataclass(frozen=True, slots=True)
class _Switch:
    kind: type
    lo: float = -math.inf
    hi: float = math.inf
    doc: str = ""
    check: Callable[[Any], Any] | None = None
    """A custom check (``kind`` is then ``object``): returns the value, raises ValueError."""


SWITCHES: dict[str, _Switch] = {
    "error_rate": _Switch(float, 0.0, 1.0, "fraction of requests answered 500"),
    "speed": _Switch(float, 0.001, 1000.0, "throughput factor (2.0 = twice as fast)"),
    "stall": _Switch(bool, doc="true: no request makes progress (a hung GPU)"),
    "max_running": _Switch(int, 1, 100_000, "sequences decoded at once"),
    "max_queue": _Switch(int, 0, 10_000_000, "waiting requests beyond which it answers 503"),
    "ttft_ms": _Switch(float, 0.0, 600_000.0, "fixed part of the time to first token"),
    "tpot_ms": _Switch(float, 0.01, 60_000.0, "time per output token, batch of one"),
    "kv_capacity_tokens": _Switch(int, 1, 10**9, "KV-cache size in tokens"),
    "load_time": _Switch(
        float,
        0.0,
        3600.0,
        "start a (re)load now, for this many seconds: health 503, in-flight requests aborted",
    ),
    "version": _Switch(str, doc="the version /v1/models reports (aixds_version)"),
    "stall_for": _Switch(float, 0.0, 3600.0, "stall for this many seconds, then resume by itself"),
    "prefill_tps": _Switch(float, 0.0, 1e9, "prefill tokens per second at speed 1 (0: free)"),
    "batch_slowdown": _Switch(
        float, 0.0, 100.0, "a decode step takes tpot_ms * (1 + this * (batch - 1))"
    ),
    "external_load": _Switch(
        float, 0.0, MAX_EXTERNAL_LOAD, "share of the GPU a noisy neighbour takes"
    ),
    "gpu_throttle": _Switch(bool, doc="thermal throttling: slower, and NVML says so"),
    "prefix_caching": _Switch(
        bool, doc="automatic prefix caching; false drops the cached blocks nobody uses"
    ),
    "gpu_fault": _Switch(
        object, doc="'xid N', 'ecc [N]', 'remap', 'lost', or null to clear", check=parse_fault
    ),
    "crash": _Switch(bool, doc="true: the process exits at once, without cleanup"),
    "lora_load_ms": _Switch(float, 0.0, 600_000.0, "how long loading a LoRA adapter takes"),
    "load_time_ms": _Switch(
        float, 0.0, 3_600_000.0, "load time of an --available model without its own"
    ),
    "wake_ms": _Switch(float, 0.0, 600_000.0, "how long a wake from level-1 sleep takes"),
    "lora_fail_loads": _Switch(
        int, 0, 1_000_000, "answer the next N LoRA adapter loads with 500 (after the delay)"
    ),
}


def parse_control(doc: Any) -> dict[str, Any]:
    """Check a control document; return the changes (name -> value) it asks for."""
    if not isinstance(doc, dict):
        raise ControlError("control body must be a JSON object")
    unknown = sorted(set(doc) - set(SWITCHES))
    if unknown:
        raise ControlError(f"unknown switch(es) {unknown}; known: {sorted(SWITCHES)}")
    return {name: _check(name, SWITCHES[name], v) for name, v in doc.items()}


def _check(name: str, sw: _Switch, v: Any) -> Any:
    def bad(why: str) -> ControlError:
        return ControlError(f"{name!r} {why}")

    if sw.check is not None:
        try:
            return sw.check(v)
        except ValueError as e:
            raise bad(str(e)) from None
    if sw.kind is bool:
        if not isinstance(v, bool):
            raise bad("must be true or false")
        return v
    if sw.kind is str:
        if not isinstance(v, str) or not v or len(v) > 128:
            raise bad("must be a non-empty string of at most 128 characters")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad("must be a number")
    if sw.kind is int and not isinstance(v, int):
        raise bad("must be an integer")
    if not math.isfinite(v) or not sw.lo <= v <= sw.hi:
        raise bad(f"must be in [{sw.lo}, {sw.hi}]")
    return sw.kind(v)
