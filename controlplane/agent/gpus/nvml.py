"""``--gpu nvml``: the node's GPUs through NVML (``pynvml`` from ``nvidia-ml-py``).

Per GPU, each read gets: UUID, utilization (GPU and memory controller), memory used and
total, temperature, power and enforced power limit, clock-event reasons (thermal and
power reasons -> ``throttled``), the volatile uncorrectable ECC count, the remapped-row
failure flag, and the XID critical errors NVML delivered since the last read (an event
set polled with timeout 0). A GPU becomes faulty on:

- an XID critical error (reason ``xid N``), except the XIDs NVIDIA's catalog attributes
  to the application (``APP_XIDS``: 13, 31, 43, 45), which are logged only;
- an uncorrectable ECC error counted after the agent started (reason ``ecc +N``);
- a remapped-row failure (``remapped-row failure``);
- NVML answering ``GPU is lost`` for it (``gpu lost``, e.g. after XID 79).

Faults latch (``faults.FaultLatch``) until the agent restarts or an operator clears them;
clearing also takes the current ECC count as the new baseline.

Without NVML (no ``pynvml``, no ``libnvidia-ml.so.1``, no driver, no permission) or when
NVML fails as a whole, ``read()`` logs one line with the reason and returns ``()``, so the
agent keeps publishing the model-server side; it retries every ``retry_s``. A call that
one GPU does not support (ECC on consumer boards, remapped rows before Ampere) leaves that
field at its default and is logged once. The nvml module is a constructor argument, so
tests pass ``fake_nvml.FakeNvml``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.agent.gpus.faults import FaultLatch
from controlplane.agent.gpus.source import sane
from controlplane.fleet.model import GpuStats

log = logging.getLogger(__name__)

APP_XIDS = frozenset({13, 31, 43, 45})
"""XIDs that NVIDIA's catalog resolves with RESTART_APP and that almost always come from
the application (illegal memory access, engine exception, channel teardown on exit):
logged, but they do not take the GPU out of service."""

MAX_EVENTS_PER_READ = 256

# Clock-event reason bits (same values in pynvml's Event and older Throttle names).
REASON_NAMES: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
"""Thermal and power reasons: SW power cap, HW slowdown, SW/HW thermal, HW power brake.
(Idle, application clocks, sync boost and display clocks are not throttling.)"""

# Errors after which NVML as a whole is unusable (re-initialize later).
_GLOBAL_ERRORS = frozenset({1, 9, 12, 18})  # uninitialized, driver, library, RM mismatch
_UNAVAILABLE = frozenset({3, 4, 13})  # not supported, no permission, function not found
_TIMEOUT = 10
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15


def throttle_reasons(mask: int) -> tuple[str, ...]:
    """Names of the clock-event reason bits set in ``mask`` (unknown bits as hex)."""
    names = [n for bit, n in REASON_NAMES.items() if mask & bit]
    rest = mask & ~sum(REASON_NAMES)
    if rest:
        names.append(hex(rest))
    return tuple(names)


def is_throttled(mask: int, throttle_mask: int = THROTTLE_MASK) -> bool:
    return bool(mask & throttle_mask)


def unavailable_reason(err: BaseException) -> str:
    """Why NVML cannot be used, in words an operator can act on."""
    code = getattr(err, "value", None)
    if code == 12:
        return "libnvidia-ml.so.1 not found (no NVIDIA driver installed on this machine?)"
    if code == 9:
        return "the NVIDIA kernel driver is not loaded"
    if code == 4:
        return "no permission to use the GPUs (/dev/nvidia* not accessible?)"
    if code == 18:
        return "NVML and the kernel driver versions differ (driver upgraded without reboot?)"
    return f"{type(err).__name__}: {err}"


class _GlobalFailure(Exception):
    """NVML stopped working as a whole during a read."""


class _Lost(Exception):
    """The GPU answered 'GPU is lost'."""


class _Missing(Exception):
    """The driver lacks this function."""


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str = ""
    name: str = ""
    ecc_baseline: int | None = None
    said: set[str] = field(default_factory=set)
    """Fields whose failure was logged already."""

    @property
    def key(self) -> str:
        """Latch key: the UUID, which survives renumbering; the index if unknown."""
        return self.uuid or f"index:{self.index}"


def _handle_key(handle: Any) -> Hashable:
    """Identity of a device handle: pynvml returns a fresh ctypes pointer each time."""
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return handle  # type: ignore[no-any-return]


def _load_pynvml() -> Any:
    import pynvml

    return pynvml


class NvmlGpuSource:
    """Reads every GPU of the node through NVML. Implements ``GpuSource``.

    ``read()`` makes synchronous NVML calls (milliseconds; longer on a sick node): run it
    through ``poll.PolledGpuSource``. ``clear_faults`` may be called from another
    thread; it never waits for NVML.
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        ignored_xids: Iterable[int] = APP_XIDS,
        throttle_mask: int = THROTTLE_MASK,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._nvml = nvml
        self._ignored_xids = frozenset(ignored_xids)
        self._throttle_mask = throttle_mask
        self._retry_s = retry_s
        self._clock = clock
        self.latch = FaultLatch(wall_clock)
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[Hashable, _Gpu] = {}
        self._events: Any = None
        self._ready = False
        self._retry_at = 0.0
        self.problem = ""
        """Why NVML is not in use now ("" when it is)."""
        self._use_throttle_name = False
        self._lock = threading.Lock()
        self._rebaseline: set[str] = set()
        self._said_global: set[str] = set()

    # -- GpuSource ----------------------------------------------------------------------
    def read(self) -> tuple[GpuStats, ...]:
        if not self._ready:
            if self._clock() < self._retry_at:
                return ()
            self._start()
            if not self._ready:
                return ()
        try:
            xids = self._drain_events()
            return tuple(sane(self._read_gpu(g, xids.get(g.index, ()))) for g in self._gpus)
        except _GlobalFailure as e:
            self._fail(str(e))
            return ()
        except Exception as e:  # a bug or an unexpected ctypes error: keep the agent going
            log.exception("NVML read failed")
            self._fail(f"{type(e).__name__}: {e}")
            return ()

    def clear_faults(self, before: float) -> list[str]:
        """Clear faults latched at or before ``before`` (epoch s); re-baseline their ECC."""
        cleared = self.latch.clear(before)
        with self._lock:
            self._rebaseline.update(cleared)
        for key in cleared:
            log.info("GPU %s: fault cleared by the operator", key)
        return cleared

    def close(self) -> None:
        if self._ready:
            self._shutdown()
        self._ready = False

    # -- setup --------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            if self._nvml is None:
                self._nvml = _load_pynvml()
        except ImportError as e:
            self._fail(f"pynvml is not installed ({e}); install nvidia-ml-py")
            return
        nv = self._nvml
        try:
            nv.nvmlInit()
        except Exception as e:
            self._fail(unavailable_reason(e))
            return
        try:
            gpus = [self._open(i) for i in range(int(nv.nvmlDeviceGetCount()))]
            driver = _text(self._optional(nv.nvmlSystemGetDriverVersion))
        except Exception as e:
            self._fail(unavailable_reason(e))
            self._shutdown()
            return
        self._gpus = gpus
        self._by_handle = {_handle_key(g.handle): g for g in gpus if g.handle is not None}
        watched = self._register_events()
        self._ready = True
        self.problem = ""
        names = sorted({g.name for g in gpus if g.name}) or ["-"]
        log.info(
            "NVML %s: %d GPU(s) (%s); XID events on %d",
            driver or "?",
            len(gpus),
            ", ".join(names),
            watched,
        )

    def _open(self, index: int) -> _Gpu:
        nv = self._nvml
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except nv.NVMLError as e:
            if getattr(e, "value", None) != _GPU_IS_LOST:
                raise
            return _Gpu(index, None)  # lost before we started: faulty from the first read
        gpu = _Gpu(index, handle)
        try:
            gpu.uuid = _text(nv.nvmlDeviceGetUUID(handle))
            gpu.name = _text(self._optional(nv.nvmlDeviceGetName, handle))
        except nv.NVMLError as e:
            if getattr(e, "value", None) != _GPU_IS_LOST:
                raise
        return gpu

    def _optional(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError as e:
            if getattr(e, "value", None) in _UNAVAILABLE:
                return None
            raise

    def _register_events(self) -> int:
        nv = self._nvml
        try:
            self._events = nv.nvmlEventSetCreate()
        except nv.NVMLError as e:
            log.warning("NVML events unavailable (%s): XID errors will not be seen", e)
            self._events = None
            return 0
        watched = 0
        for g in self._gpus:
            if g.handle is None:
                continue
            try:
                nv.nvmlDeviceRegisterEvents(
                    g.handle, nv.nvmlEventTypeXidCriticalError, self._events
                )
                watched += 1
            except nv.NVMLError as e:
                log.warning("GPU %d: XID events unavailable (%s)", g.index, e)
        return watched

    def _fail(self, reason: str) -> None:
        if self._ready:
            self._shutdown()
        self._ready = False
        self._retry_at = self._clock() + self._retry_s
        if reason != self.problem:
            log.warning(
                "NVML unavailable: %s; publishing no GPU stats (retry every %.0f s)",
                reason,
                self._retry_s,
            )
        self.problem = reason

    def _shutdown(self) -> None:
        nv, events = self._nvml, self._events
        self._events = None
        if nv is None:
            return
        for fn, args in ((getattr(nv, "nvmlEventSetFree", None), (events,)), (nv.nvmlShutdown, ())):
            if fn is None or (args and args[0] is None):
                continue
            try:
                fn(*args)
            except Exception as e:  # best effort: the library may be gone already
                log.debug("NVML cleanup: %s", e)

    # -- one read -----------------------------------------------------------------------
    def _drain_events(self) -> dict[int, list[int]]:
        """XIDs delivered since the last read, by GPU index."""
        nv = self._nvml
        out: dict[int, list[int]] = {}
        if self._events is None:
            return out
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = nv.nvmlEventSetWait_v2(self._events, 0)
            except nv.NVMLError as e:
                code = getattr(e, "value", None)
                if code == _TIMEOUT:
                    break
                if code in _GLOBAL_ERRORS:
                    raise _GlobalFailure(unavailable_reason(e)) from None
                if "events" not in self._said_global:
                    log.warning("NVML event wait failed (%s)", e)
                    self._said_global.add("events")
                break
            if not int(data.eventType) & int(nv.nvmlEventTypeXidCriticalError):
                continue
            gpu = self._by_handle.get(_handle_key(data.device))
            if gpu is None and len(self._gpus) == 1:
                gpu = self._gpus[0]
            if gpu is None:
                log.warning("XID %d on a GPU not in this agent's list", int(data.eventData))
                continue
            out.setdefault(gpu.index, []).append(int(data.eventData))
        return out

    def _read_gpu(self, g: _Gpu, xids: Iterable[int]) -> GpuStats:
        nv = self._nvml
        faults: list[str] = []
        stats = GpuStats(index=g.index, uuid=g.uuid)
        for x in xids:
            if x in self._ignored_xids:
                log.info("GPU %d: xid %d (usually the application's fault): not faulty", g.index, x)
            else:
                faults.append(f"xid {x}")
        try:
            if g.handle is None:
                raise _Lost
            h = g.handle
            util = self._field(g, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._field(g, "memory", nv.nvmlDeviceGetMemoryInfo, h)
            temp = self._field(
                g, "temperature", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
            )
            power = self._field(g, "power", nv.nvmlDeviceGetPowerUsage, h)
            limit = self._field(g, "power limit", nv.nvmlDeviceGetEnforcedPowerLimit, h)
            reasons = self._clock_reasons(g)
            ecc = self._field(
                g,
                "ecc",
                nv.nvmlDeviceGetTotalEccErrors,
                h,
                nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                nv.NVML_VOLATILE_ECC,
            )
            rows = self._field(g, "remapped rows", nv.nvmlDeviceGetRemappedRows, h)
        except _Lost:
            faults.append("gpu lost")
        else:
            if ecc is not None:
                faults += self._ecc_faults(g, int(ecc))
            if rows is not None and len(rows) >= 4 and rows[3]:
                faults.append("remapped-row failure")
            stats = GpuStats(
                index=g.index,
                uuid=g.uuid,
                util_gpu=util.gpu / 100.0 if util is not None else 0.0,
                util_mem=util.memory / 100.0 if util is not None else 0.0,
                mem_used_bytes=int(mem.used) if mem is not None else 0,
                mem_total_bytes=int(mem.total) if mem is not None else 0,
                temperature_c=float(temp) if temp is not None else 0.0,
                power_w=power / 1000.0 if power is not None else 0.0,
                power_limit_w=limit / 1000.0 if limit is not None else 0.0,
                throttled=reasons is not None and is_throttled(int(reasons), self._throttle_mask),
            )
        reason, new = self.latch.observe(g.key, faults[0] if faults else None)
        if new:
            log.warning(
                "GPU %d (%s) is faulty: %s; its replicas leave until an operator clears it "
                "or the agent restarts",
                g.index,
                g.uuid or "uuid unknown",
                reason,
            )
        if reason is None:
            return stats
        return replace(stats, faulty=True, fault_reason=reason)

    def _ecc_faults(self, g: _Gpu, count: int) -> list[str]:
        with self._lock:
            rebase = g.key in self._rebaseline
            self._rebaseline.discard(g.key)
        # A lower count than the baseline: the driver reloaded (volatile counts restart).
        if rebase or g.ecc_baseline is None or count < g.ecc_baseline:
            g.ecc_baseline = count
            return []
        if count > g.ecc_baseline:
            return [f"ecc +{count - g.ecc_baseline}"]
        return []

    def _clock_reasons(self, g: _Gpu) -> Any:
        nv = self._nvml
        if not self._use_throttle_name:
            fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            if fn is not None:
                try:
                    return self._field(g, "clock reasons", fn, g.handle, missing_ok=True)
                except _Missing:
                    pass
            # Drivers before r535 (and old pynvml) have only the "throttle reasons" name.
            self._use_throttle_name = True
            log.info("NVML: no ClocksEventReasons; using ClocksThrottleReasons (driver < r535)")
        fn = nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return self._field(g, "clock reasons", fn, g.handle)

    def _field(
        self, g: _Gpu, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False
    ) -> Any:
        """One NVML call for GPU ``g``: its value, or ``None`` (logged once) if it failed.

        ``missing_ok``: raise ``_Missing`` if the driver lacks the function.
        """
        nv = self._nvml
        try:
            return fn(*args)
        except nv.NVMLError as e:
            code = getattr(e, "value", None)
            if missing_ok and code == _FUNCTION_NOT_FOUND:
                raise _Missing from None
            if code == _GPU_IS_LOST:
                raise _Lost from None
            if code in _GLOBAL_ERRORS:
                raise _GlobalFailure(unavailable_reason(e)) from None
            if what not in g.said:
                g.said.add(what)
                level = logging.INFO if code in _UNAVAILABLE else logging.WARNING
                log.log(level, "GPU %d: %s not available (%s)", g.index, what, e)
            return None


def _text(v: Any) -> str:
    """pynvml returns ``str`` (or ``bytes`` from old versions) for names and UUIDs."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)
