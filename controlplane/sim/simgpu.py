"""The fake server's simulated GPU: telemetry derived from the engine, and injected faults.

``GET /sim/gpu`` serves ``SimGpu.document()``: what NVML would say about the GPU, in
NVML's own units (percent, bytes, milliwatts, reason bits, counters, XID events), so the
agent's ``--gpu sim`` source reads it through its NVML code path (``agent.gpus.sim``).

How the numbers follow the engine (``busy`` = share of the last half second with a
sequence running, ``ext`` = the noisy neighbour's share, ``fill`` = running /
max_running):

- utilization.gpu = ext + (1 - ext) * busy (NVML's is time-based: one sequence keeps the
  GPU "100% busy", as on real hardware; a stalled GPU with work in flight stays busy);
- utilization.memory = ext / 2 + (1 - ext) * busy * (0.3 + 0.6 * fill);
- memory used = weights + KV-cache use * KV pool, where the pool is what
  ``gpu_memory_utilization`` (0.9) leaves after the weights. The weights are the base
  model's plus every available model loaded (``residency``); asleep, none and no pool.
  (Real vLLM reserves the whole pool at start, so nvidia-smi shows it as used; showing
  live use makes the demo legible.)
- power = limit * (0.1 + 0.55 * utilization.gpu + 0.25 * utilization.memory), at most 90%;
  temperature = 30 + 50 * power / limit C, at least 88 C while throttled;
- clock-event reasons: GPU idle when nothing runs; SW and HW thermal slowdown while
  ``gpu_throttle`` is on (the engine then runs at ``THROTTLED_SPEED``).

Faults (``{"gpu_fault": ...}`` on ``/control``) change telemetry only, as the matching
hardware fault would look to NVML; combine them with ``stall``, ``error_rate`` or
``crash`` for the effect on serving:

- ``xid N``: an XID critical-error event N;
- ``ecc`` / ``ecc N``: N more uncorrectable (volatile) ECC errors, and as many rows
  waiting to be remapped;
- ``remap``: a remapped-row failure (the flag stays until cleared);
- ``lost``: the GPU fell off the bus: XID 79, then every NVML call answers "GPU is lost";
- ``null`` or ``""``: the persistent conditions end (a GPU reset): no more remap
  failure or lost GPU, the volatile ECC count restarts at 0. Past events stay.
"""

from __future__ import annotations

import collections
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controlplane.sim.engine import Engine, Knobs

GiB = 1 << 30
MAX_EVENTS = 64
"""XID events kept in the document (the oldest go first)."""

REASON_GPU_IDLE = 0x1
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """The simulated board."""

    name: str = "NVIDIA H100 80GB HBM3 (simulated)"
    mem_total_bytes: int = 80 * GiB
    weights_bytes: int = 16 * GiB
    """Model weights resident on the GPU."""
    power_limit_w: float = 700.0
    mem_utilization: float = 0.9
    """vLLM's ``gpu_memory_utilization``: weights + KV pool take this share of memory."""
    uuid: str = ""
    """The GPU's uuid; empty: one derived from the replica id. Servers given the same uuid
    stand for servers sharing one GPU (placement counts its memory once); each still
    reports only its own memory use."""


_FAULT = re.compile(r"^(xid (\d{1,4})|ecc(?: (\d{1,6}))?|remap|lost)$")


def parse_fault(value: Any) -> str:
    """Check a ``gpu_fault`` value; ``""`` means clear. ``ValueError`` says why not."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 32:
        raise ValueError("must be a string such as 'xid 79', 'ecc', 'remap', 'lost' or null")
    v = " ".join(value.lower().split())
    if v and not _FAULT.match(v):
        raise ValueError(f"{value!r} is not one of 'xid N', 'ecc [N]', 'remap', 'lost', null")
    return v


class SimGpu:
    """One simulated GPU under one fake server's engine."""

    def __init__(
        self,
        engine: Engine,
        knobs: Knobs,
        replica_id: str,
        spec: GpuSpec,
        memory: Callable[[], tuple[int, bool]] | None = None,
    ) -> None:
        self._engine = engine
        self._memory = memory
        """Weights resident now and whether the KV pool is there (default: the spec's
        weights and a KV pool, always)."""
        self._knobs = knobs
        self.spec = spec
        self.uuid = spec.uuid or f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, 'aixds-sim/' + replica_id)}"
        self.boot_id = uuid.uuid4().hex
        """Changes when the server restarts, so a reader knows its event numbers restarted."""
        self.ecc_uncorrected = 0
        self.rows_pending = 0
        self.remap_failure = False
        self.lost = False
        self._events: collections.deque[tuple[int, int]] = collections.deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self.last_fault = ""

    def inject(self, fault: str) -> None:
        """Apply a value checked by ``parse_fault``."""
        self.last_fault = fault
        if not fault:
            self.remap_failure = self.lost = False
            self.ecc_uncorrected = self.rows_pending = 0
        elif fault.startswith("xid "):
            self._event(int(fault[4:]))
        elif fault.startswith("ecc"):
            n = int(fault[4:]) if len(fault) > 3 else 1
            self.ecc_uncorrected += n
            self.rows_pending += n
        elif fault == "remap":
            self.remap_failure = True
        elif fault == "lost":
            self._event(79)
            self.lost = True

    def _event(self, xid: int) -> None:
        self._seq += 1
        self._events.append((self._seq, xid))

    def document(self) -> dict[str, Any]:
        """The ``GET /sim/gpu`` body: one GPU, in NVML's units."""
        e, k, s = self._engine, self._knobs, self.spec
        ext = min(0.95, max(0.0, k.external_load))
        busy = e.busy_fraction
        fill = min(1.0, e.running / max(1, k.max_running))
        util_gpu = ext + (1.0 - ext) * busy
        util_mem = ext / 2.0 + (1.0 - ext) * busy * (0.3 + 0.6 * fill)
        power_frac = 0.1 + 0.55 * util_gpu + 0.25 * util_mem
        temp = 30.0 + 50.0 * power_frac
        reasons = 0
        if e.running == 0 and ext == 0.0:
            reasons |= REASON_GPU_IDLE
        if k.gpu_throttle:
            reasons |= REASON_SW_THERMAL | REASON_HW_THERMAL
            temp = max(temp, 88.0)
        weights, kv_on = (s.weights_bytes, True) if self._memory is None else self._memory()
        pool = max(0.0, s.mem_utilization * s.mem_total_bytes - weights) if kv_on else 0.0
        used = min(s.mem_total_bytes, weights + int(e.kv_usage * pool))
        gpu = {
            "index": 0,
            "uuid": self.uuid,
            "name": s.name,
            "lost": self.lost,
            "utilization_gpu_pct": round(100 * util_gpu),
            "utilization_memory_pct": round(100 * util_mem),
            "memory_total_bytes": s.mem_total_bytes,
            "memory_used_bytes": used,
            "temperature_c": round(temp),
            "power_mw": round(power_frac * s.power_limit_w * 1000),
            "power_limit_mw": round(s.power_limit_w * 1000),
            "clocks_event_reasons": reasons,
            "ecc_uncorrected_volatile": self.ecc_uncorrected,
            "remapped_rows": {
                "correctable": 0,
                "uncorrectable": self.rows_pending,
                "pending": self.rows_pending > 0,
                "failure": self.remap_failure,
            },
            "xid_events": [{"seq": n, "xid": x} for n, x in self._events],
            "last_fault": self.last_fault,
        }
        return {"boot_id": self.boot_id, "gpus": [gpu]}
