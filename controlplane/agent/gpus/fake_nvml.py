"""An in-memory NVML: the subset of ``pynvml`` the agent uses, over simulated GPUs.

``FakeNvml`` has the same function names, constants and ``NVMLError`` subclasses (with
the same error codes) as ``pynvml``, so ``NvmlGpuSource(FakeNvml([...]))`` runs exactly
the code that runs on a GPU node. It serves two purposes:

- tests: set a ``FakeGpu``'s fields, mark calls unsupported or failing, push XID events
  (``xid()``), make a GPU fall off the bus (``lost``) or NVML vanish (``init_error``);
- the agent's ``--gpu sim`` source (``sim``), which loads the fake LLM server's
  simulated GPU into a ``FakeNvml`` and reads it like real hardware.

Differences from the real library: ``nvmlEventSetWait_v2`` never sleeps (it returns a
queued event or raises ``NVMLError_Timeout`` at once, whatever the timeout), and handles
are plain objects rather than ctypes pointers.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Error codes, as in nvml.h / pynvml.
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``: ``.value`` is the NVML error code."""

    CODE: ClassVar[int] = NVML_ERROR_UNKNOWN

    def __init__(self, value: int | None = None) -> None:
        self.value = self.CODE if value is None else value
        super().__init__(self.value)

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_Uninitialized(NVMLError):
    CODE = NVML_ERROR_UNINITIALIZED


class NVMLError_NotSupported(NVMLError):
    CODE = NVML_ERROR_NOT_SUPPORTED


class NVMLError_NoPermission(NVMLError):
    CODE = NVML_ERROR_NO_PERMISSION


class NVMLError_NotFound(NVMLError):
    CODE = NVML_ERROR_NOT_FOUND


class NVMLError_DriverNotLoaded(NVMLError):
    CODE = NVML_ERROR_DRIVER_NOT_LOADED


class NVMLError_Timeout(NVMLError):
    CODE = NVML_ERROR_TIMEOUT


class NVMLError_LibraryNotFound(NVMLError):
    CODE = NVML_ERROR_LIBRARY_NOT_FOUND


class NVMLError_FunctionNotFound(NVMLError):
    CODE = NVML_ERROR_FUNCTION_NOT_FOUND


class NVMLError_GpuIsLost(NVMLError):
    CODE = NVML_ERROR_GPU_IS_LOST


class NVMLError_Unknown(NVMLError):
    CODE = NVML_ERROR_UNKNOWN


GiB = 1 << 30
_Error = NVMLError
"""For annotations inside ``FakeNvml``, whose ``NVMLError`` attribute shadows the class."""


@dataclass
class FakeGpu:
    """One simulated GPU, in NVML's own units. Mutate the fields to change what NVML says."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    util_gpu: int = 0
    """Percent."""
    util_mem: int = 0
    """Percent (memory-controller busy time)."""
    mem_total: int = 80 * GiB
    mem_used: int = 0
    temperature: int = 35
    """Degrees C."""
    power_mw: int = 90_000
    power_limit_mw: int = 700_000
    clocks_event_reasons: int = 0
    ecc_uncorrected: int = 0
    """Volatile uncorrectable ECC error count (reset when the driver reloads)."""
    ecc_uncorrected_aggregate: int = 0
    remapped_rows: tuple[int, int, bool, bool] = (0, 0, False, False)
    """(correctable rows, uncorrectable rows, remap pending, remap failure)."""
    lost: bool = False
    """Fallen off the bus: every call about this GPU raises ``NVMLError_GpuIsLost``."""
    unsupported: set[str] = field(default_factory=set)
    """Names of functions that raise ``NVMLError_NotSupported`` for this GPU."""
    failing: dict[str, NVMLError] = field(default_factory=dict)
    """Function name -> the error it raises for this GPU."""


@dataclass(frozen=True, slots=True)
class Handle:
    """A device handle (``pynvml`` returns a ctypes pointer)."""

    index: int


@dataclass(frozen=True, slots=True)
class Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True, slots=True)
class Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class EventData:
    """Like ``pynvml.c_nvmlEventData_t``."""

    device: Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0
    computeInstanceId: int = 0


class EventSet:
    def __init__(self) -> None:
        self.registered: dict[int, int] = {}
        """GPU index -> registered event type mask."""
        self.queue: collections.deque[EventData] = collections.deque(maxlen=1024)
        self.freed = False


class FakeNvml:
    """The part of the ``pynvml`` module the agent uses; pass it where ``pynvml`` goes."""

    # Constants, with pynvml's values.
    NVML_TEMPERATURE_GPU = 0
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    nvmlEventTypeXidCriticalError = 0x8
    nvmlClocksEventReasonGpuIdle = 0x1
    nvmlClocksEventReasonApplicationsClocksSetting = 0x2
    nvmlClocksEventReasonSwPowerCap = 0x4
    nvmlClocksEventReasonHwSlowdown = 0x8
    nvmlClocksEventReasonSyncBoost = 0x10
    nvmlClocksEventReasonSwThermalSlowdown = 0x20
    nvmlClocksEventReasonHwThermalSlowdown = 0x40
    nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
    nvmlClocksEventReasonDisplayClockSetting = 0x100
    NVML_SUCCESS = NVML_SUCCESS
    NVML_ERROR_UNINITIALIZED = NVML_ERROR_UNINITIALIZED
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_TIMEOUT = NVML_ERROR_TIMEOUT
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_FUNCTION_NOT_FOUND = NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = NVML_ERROR_LIB_RM_VERSION_MISMATCH
    NVML_ERROR_UNKNOWN = NVML_ERROR_UNKNOWN
    # Errors, so that ``nvml.NVMLError_Timeout`` works as with the module.
    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        *,
        init_error: _Error | None = None,
        missing: Iterable[str] = (),
        driver: str = "550.54.15",
    ) -> None:
        self.gpus = list(gpus)
        self.init_error = init_error
        """Raised by ``nvmlInit`` (e.g. ``NVMLError_LibraryNotFound()``: no driver)."""
        self.missing = set(missing)
        """Functions this 'driver' lacks: they raise ``NVMLError_FunctionNotFound``."""
        self.driver = driver
        self.initialized = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self._event_sets: list[EventSet] = []

    # -- test helpers -------------------------------------------------------------------
    def xid(self, index: int, code: int) -> None:
        """The driver reports XID ``code`` on GPU ``index`` (to every registered set)."""
        for es in self._event_sets:
            if not es.freed and es.registered.get(index, 0) & self.nvmlEventTypeXidCriticalError:
                es.queue.append(EventData(Handle(index), self.nvmlEventTypeXidCriticalError, code))

    # -- library ------------------------------------------------------------------------
    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.missing:
            raise NVMLError_FunctionNotFound()
        if not self.initialized and name != "nvmlInit":
            raise NVMLError_Uninitialized()

    def _gpu(self, name: str, handle: Handle) -> FakeGpu:
        self._enter(name)
        if not isinstance(handle, Handle) or not 0 <= handle.index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise NVMLError_GpuIsLost()
        if name in gpu.unsupported:
            raise NVMLError_NotSupported()
        if name in gpu.failing:
            raise gpu.failing[name]
        return gpu

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise self.init_error
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise NVMLError_GpuIsLost()
        return Handle(index)

    def nvmlDeviceGetIndex(self, handle: Handle) -> int:
        self._gpu("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Utilization:
        g = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return Utilization(g.util_gpu, g.util_mem)

    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> Memory:
        g = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        return Memory(g.mem_total, max(0, g.mem_total - g.mem_used), g.mem_used)

    def nvmlDeviceGetTemperature(self, handle: Handle, sensor: int) -> int:
        return self._gpu("nvmlDeviceGetTemperature", handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Handle) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Handle) -> int:
        return self._gpu("nvmlDeviceGetCurrentClocksEventReasons", handle).clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Handle) -> int:
        """The pre-535 name of ``nvmlDeviceGetCurrentClocksEventReasons``."""
        return self._gpu("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Handle, error_type: int, counter: int) -> int:
        g = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        if error_type != self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return 0
        return (
            g.ecc_uncorrected if counter == self.NVML_VOLATILE_ECC else g.ecc_uncorrected_aggregate
        )

    def nvmlDeviceGetRemappedRows(self, handle: Handle) -> tuple[int, int, int, int]:
        corr, unc, pending, failure = self._gpu("nvmlDeviceGetRemappedRows", handle).remapped_rows
        return corr, unc, int(pending), int(failure)

    def nvmlEventSetCreate(self) -> EventSet:
        self._enter("nvmlEventSetCreate")
        es = EventSet()
        self._event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: Handle, event_types: int, event_set: Any) -> None:
        self._gpu("nvmlDeviceRegisterEvents", handle)
        es: EventSet = event_set
        es.registered[handle.index] = es.registered.get(handle.index, 0) | event_types

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> EventData:
        self._enter("nvmlEventSetWait_v2")
        es: EventSet = event_set
        if es.freed:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if not es.queue:
            raise NVMLError_Timeout()
        return es.queue.popleft()

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._enter("nvmlEventSetFree")
        es: EventSet = event_set
        es.freed = True
        if es in self._event_sets:
            self._event_sets.remove(es)
