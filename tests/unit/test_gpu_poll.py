"""The background GPU reader: latest sample, never blocking, faults kept when stuck."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from controlplane.agent.gpus.fake_nvml import FakeGpu, FakeNvml
from controlplane.agent.gpus.nvml import NvmlGpuSource
from controlplane.agent.gpus.poll import PolledGpuSource
from controlplane.fleet.model import GpuStats


def wait_for(pred: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError("condition not met")


class Scripted:
    """A source whose reads the test controls: a value, a hang, or an exception."""

    def __init__(self) -> None:
        self.value: tuple[GpuStats, ...] = (GpuStats(index=0, faulty=True, fault_reason="xid 79"),)
        self.gate = threading.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.closed = False

    def read(self) -> tuple[GpuStats, ...]:
        self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value

    def close(self) -> None:
        self.closed = True


def test_reads_in_the_background_and_returns_the_latest() -> None:
    nv = FakeNvml([FakeGpu("GPU-00000000-aaaa", util_gpu=10)])
    src = PolledGpuSource(NvmlGpuSource(nv), period_s=0.01)
    try:
        assert src.read()[0].util_gpu == 0.10  # the first read waits for the first sample
        nv.gpus[0].util_gpu = 90
        wait_for(lambda: src.read()[0].util_gpu == 0.90)
        nv.xid(0, 79)
        wait_for(lambda: src.read()[0].faulty)
        assert src.clear_faults(time.time()) == ["GPU-00000000-aaaa"]
        wait_for(lambda: not src.read()[0].faulty)
    finally:
        src.close()
    assert nv.initialized == 0  # closed NVML too


def test_a_hung_read_never_blocks_and_keeps_the_last_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = Scripted()
    src = PolledGpuSource(inner, period_s=0.01, stuck_s=0.05)
    try:
        first = src.read()
        assert first[0].faulty
        inner.gate.clear()  # the driver hangs
        time.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="controlplane.agent.gpus.poll"):
            t0 = time.monotonic()
            assert src.read() == first  # the fault must not disappear
            assert src.read() == first
            assert time.monotonic() - t0 < 0.05
        assert sum("driver hung?" in r.getMessage() for r in caplog.records) == 1
        inner.value = ()
        inner.gate.set()
        wait_for(lambda: src.read() == ())
    finally:
        inner.gate.set()
        src.close()
    assert inner.closed


def test_a_failing_source_keeps_the_last_sample() -> None:
    inner = Scripted()
    src = PolledGpuSource(inner, period_s=0.01)
    try:
        before = src.read()
        inner.error = RuntimeError("bug")
        n = src.samples
        wait_for(lambda: src.samples > n + 2)
        assert src.read() == before
    finally:
        src.close()


def test_first_read_waits_at_most_first_wait_s() -> None:
    inner = Scripted()
    inner.gate.clear()
    src = PolledGpuSource(inner, first_wait_s=0.05)
    try:
        t0 = time.monotonic()
        assert src.read() == ()
        assert time.monotonic() - t0 < 0.5
    finally:
        inner.gate.set()
        src.close()
