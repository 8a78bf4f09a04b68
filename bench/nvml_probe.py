"""Probe the real NVML on this machine: every field the agent's ``nvml`` source reads.

For each GPU it prints each NVML call the source makes, its raw answer (or error) and how
long it took; then what ``NvmlGpuSource.read()`` publishes and the time per full read.
Exits 0 with a clear message when there is no NVML (no driver, no GPU).

    python -m bench.nvml_probe              # 20 timed reads
    python -m bench.nvml_probe --reads 200 --events 5   # and wait 5 s for XID events
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from controlplane.agent.gpus.nvml import NvmlGpuSource, throttle_reasons, unavailable_reason


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[str, float]:
    t0 = time.perf_counter()
    try:
        value: Any = fn(*args)
        text = _show(value)
    except Exception as e:
        text = f"ERROR {type(e).__name__}: {e}"
    return text, (time.perf_counter() - t0) * 1e6


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    fields = getattr(v, "_fields_", None)
    if fields:
        return ", ".join(f"{name}={getattr(v, name)}" for name, *_ in fields)
    return repr(v)


def probe_raw(nv: Any) -> None:
    print(f"driver {_timed(nv.nvmlSystemGetDriverVersion)[0]}, NVML {_nvml_version(nv)}")
    count = nv.nvmlDeviceGetCount()
    print(f"{count} GPU(s)")
    for i in range(count):
        print(f"\nGPU {i}")
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
        except nv.NVMLError as e:
            print(f"  nvmlDeviceGetHandleByIndex: ERROR {e}")
            continue
        calls: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
            ("nvmlDeviceGetUUID", nv.nvmlDeviceGetUUID, (h,)),
            ("nvmlDeviceGetName", nv.nvmlDeviceGetName, (h,)),
            ("nvmlDeviceGetUtilizationRates", nv.nvmlDeviceGetUtilizationRates, (h,)),
            ("nvmlDeviceGetMemoryInfo", nv.nvmlDeviceGetMemoryInfo, (h,)),
            (
                "nvmlDeviceGetTemperature(GPU)",
                nv.nvmlDeviceGetTemperature,
                (h, nv.NVML_TEMPERATURE_GPU),
            ),
            ("nvmlDeviceGetPowerUsage (mW)", nv.nvmlDeviceGetPowerUsage, (h,)),
            ("nvmlDeviceGetEnforcedPowerLimit (mW)", nv.nvmlDeviceGetEnforcedPowerLimit, (h,)),
            (
                "nvmlDeviceGetCurrentClocksEventReasons",
                getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", _absent),
                (h,),
            ),
            (
                "nvmlDeviceGetCurrentClocksThrottleReasons",
                nv.nvmlDeviceGetCurrentClocksThrottleReasons,
                (h,),
            ),
            (
                "nvmlDeviceGetTotalEccErrors(uncorrected, volatile)",
                nv.nvmlDeviceGetTotalEccErrors,
                (h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
            ),
            (
                "nvmlDeviceGetTotalEccErrors(uncorrected, aggregate)",
                nv.nvmlDeviceGetTotalEccErrors,
                (h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_AGGREGATE_ECC),
            ),
            (
                "nvmlDeviceGetRemappedRows (corr, unc, pending, failure)",
                nv.nvmlDeviceGetRemappedRows,
                (h,),
            ),
        ]
        for name, fn, args in calls:
            text, us = _timed(fn, *args)
            extra = ""
            if "Reasons" in name and text.isdigit():
                extra = f"  {throttle_reasons(int(text)) or ('none',)}"
            print(f"  {name:58s} {us:9.1f} us  {text}{extra}")


def _absent(*_: Any) -> Any:
    raise AttributeError("not in this pynvml")


def _nvml_version(nv: Any) -> str:
    try:
        return _show(nv.nvmlSystemGetNVMLVersion())
    except Exception as e:
        return f"? ({e})"


def probe_events(nv: Any, wait_s: float) -> None:
    print(f"\nXID events: register, poll once with timeout 0, then wait {wait_s:g} s")
    try:
        es = nv.nvmlEventSetCreate()
    except nv.NVMLError as e:
        print(f"  nvmlEventSetCreate: ERROR {e}")
        return
    for i in range(nv.nvmlDeviceGetCount()):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
        except nv.NVMLError as e:
            print(f"  GPU {i}: nvmlDeviceGetHandleByIndex: ERROR {e}")
            continue
        text, us = _timed(nv.nvmlDeviceRegisterEvents, h, nv.nvmlEventTypeXidCriticalError, es)
        print(f"  GPU {i}: nvmlDeviceRegisterEvents(XidCriticalError) {us:.1f} us  {text}")
    text, us = _timed(nv.nvmlEventSetWait_v2, es, 0)
    print(f"  nvmlEventSetWait_v2(timeout 0) {us:.1f} us  {text}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            data = nv.nvmlEventSetWait_v2(es, 500)
        except nv.NVMLError as e:
            if getattr(e, "value", None) != nv.NVML_ERROR_TIMEOUT:
                print(f"  wait: ERROR {e}")
                break
            continue
        print(f"  event type {data.eventType:#x} data {data.eventData}")
    nv.nvmlEventSetFree(es)


def probe_source(nv: Any, reads: int) -> None:
    src = NvmlGpuSource(nv)
    t0 = time.perf_counter()
    first = src.read()
    first_ms = (time.perf_counter() - t0) * 1e3
    print(f"\nNvmlGpuSource: first read (init included) {first_ms:.1f} ms")
    for g in first:
        print(f"  {g}")
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        src.read()
        times.append((time.perf_counter() - t) * 1e3)
    if times:
        q = sorted(times)
        print(
            f"  {reads} reads: mean {statistics.fmean(times):.2f} ms, "
            f"median {q[len(q) // 2]:.2f} ms, max {q[-1]:.2f} ms "
            f"({len(first)} GPU(s); {statistics.fmean(times) / max(1, len(first)):.2f} ms/GPU)"
        )
    src.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nvml_probe", description=__doc__)
    p.add_argument("--reads", type=int, default=20, help="timed full reads (%(default)s)")
    p.add_argument("--events", type=float, default=0.0, metavar="S", help="wait S s for XIDs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import pynvml as nv
    except ImportError as e:
        print(f"no NVML: pynvml is not installed ({e}); nothing to probe")
        return 0
    try:
        nv.nvmlInit()
    except Exception as e:
        print(f"no NVML on this machine: {unavailable_reason(e)}; nothing to probe")
        return 0
    try:
        probe_raw(nv)
        probe_events(nv, args.events)
    finally:
        nv.nvmlShutdown()
    probe_source(nv, args.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
