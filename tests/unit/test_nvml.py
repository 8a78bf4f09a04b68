"""The ``nvml`` GPU source against ``FakeNvml``: mapping, throttling, faults, latching."""

from __future__ import annotations

import logging

import pytest

from controlplane.agent.gpus import fake_nvml as fk
from controlplane.agent.gpus.fake_nvml import FakeGpu, FakeNvml
from controlplane.agent.gpus.nvml import (
    APP_XIDS,
    THROTTLE_MASK,
    NvmlGpuSource,
    is_throttled,
    throttle_reasons,
)
from controlplane.agent.gpus.source import sane
from controlplane.fleet.codec import decode_record, encode_record
from controlplane.fleet.model import GpuStats, ReplicaRecord, ServerKind

U0 = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
U1 = "GPU-1c2d3e4f-0000-4106-c12f-20bd9faed9f6"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                U0,
                util_gpu=57,
                util_mem=31,
                mem_total=80 * fk.GiB,
                mem_used=60 * fk.GiB,
                temperature=64,
                power_mw=512_345,
                power_limit_mw=700_000,
            ),
            FakeGpu(U1),
        ]
    )


def source(nv: FakeNvml, **kw: object) -> tuple[NvmlGpuSource, Clock]:
    wall = Clock()
    mono = Clock(0.0)
    return NvmlGpuSource(nv, clock=mono, wall_clock=wall, **kw), wall  # type: ignore[arg-type]


def test_maps_every_field() -> None:
    src, _ = source(two_gpus())
    g0, g1 = src.read()
    assert g0 == GpuStats(
        index=0,
        uuid=U0,
        util_gpu=0.57,
        util_mem=0.31,
        mem_used_bytes=60 * fk.GiB,
        mem_total_bytes=80 * fk.GiB,
        temperature_c=64.0,
        power_w=512.345,
        power_limit_w=700.0,
    )
    assert (g1.index, g1.uuid, g1.faulty, g1.throttled) == (1, U1, False, False)


def test_published_stats_survive_the_record_codec() -> None:
    nv = two_gpus()
    nv.gpus[0].util_gpu = 255  # a driver reporting nonsense
    nv.gpus[0].temperature = 4000
    src, _ = source(nv)
    gpus = src.read()
    rec = ReplicaRecord("n/vllm-1", "n", "r", "z", "10.0.0.1", 1, ServerKind.VLLM, (), gpus=gpus)
    back = decode_record(encode_record(rec))
    assert back.gpus[0].util_gpu == 1.0
    assert back.gpus[0].temperature_c == 200.0


def test_sane_clamps_nan_and_drops_reason_of_healthy_gpu() -> None:
    g = sane(GpuStats(index=0, util_gpu=float("nan"), power_w=-3.0, fault_reason="stale"))
    assert (g.util_gpu, g.power_w, g.fault_reason) == (0.0, 0.0, "")


@pytest.mark.parametrize(
    ("mask", "throttled", "names"),
    [
        (0x0, False, ()),
        (0x1, False, ("gpu_idle",)),
        (0x2 | 0x10, False, ("applications_clocks_setting", "sync_boost")),
        (0x100, False, ("display_clock_setting",)),
        (0x4, True, ("sw_power_cap",)),
        (0x8, True, ("hw_slowdown",)),
        (0x20, True, ("sw_thermal_slowdown",)),
        (0x40 | 0x1, True, ("gpu_idle", "hw_thermal_slowdown")),
        (0x80, True, ("hw_power_brake_slowdown",)),
        (0x1000, False, ("0x1000",)),
    ],
)  # fmt: skip
def test_throttle_decoding(mask: int, throttled: bool, names: tuple[str, ...]) -> None:
    assert is_throttled(mask) is throttled
    assert throttle_reasons(mask) == names


def test_throttle_from_clock_event_reasons() -> None:
    nv = two_gpus()
    nv.gpus[0].clocks_event_reasons = nv.nvmlClocksEventReasonHwThermalSlowdown
    nv.gpus[1].clocks_event_reasons = nv.nvmlClocksEventReasonGpuIdle
    src, _ = source(nv)
    g0, g1 = src.read()
    assert g0.throttled and not g1.throttled
    assert not g0.faulty  # throttling lowers the weight; it is not a fault
    nv.gpus[0].clocks_event_reasons = 0
    assert not src.read()[0].throttled  # throttling does not latch


def test_throttle_mask_is_configurable() -> None:
    nv = two_gpus()
    nv.gpus[0].clocks_event_reasons = nv.nvmlClocksEventReasonSwPowerCap
    src, _ = source(nv, throttle_mask=THROTTLE_MASK & ~nv.nvmlClocksEventReasonSwPowerCap)
    assert not src.read()[0].throttled


def test_old_driver_uses_throttle_reasons_name() -> None:
    nv = two_gpus()
    nv.missing = {"nvmlDeviceGetCurrentClocksEventReasons"}
    nv.gpus[1].clocks_event_reasons = 0x20
    src, _ = source(nv)
    assert [g.throttled for g in src.read()] == [False, True]
    src.read()
    assert nv.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1  # tried once, remembered
    assert nv.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 4


def test_ecc_errors_before_start_are_history_new_ones_are_faults() -> None:
    nv = two_gpus()
    nv.gpus[0].ecc_uncorrected = 5  # from before the agent started
    src, _ = source(nv)
    assert not src.read()[0].faulty
    nv.gpus[0].ecc_uncorrected = 7
    g0, g1 = src.read()
    assert (g0.faulty, g0.fault_reason) == (True, "ecc +2")
    assert not g1.faulty


def test_ecc_counter_reset_by_driver_reload_is_not_a_fault() -> None:
    nv = two_gpus()
    nv.gpus[0].ecc_uncorrected = 5
    src, _ = source(nv)
    src.read()
    nv.gpus[0].ecc_uncorrected = 0  # volatile counts restart with the driver
    assert not src.read()[0].faulty
    nv.gpus[0].ecc_uncorrected = 1
    assert src.read()[0].fault_reason == "ecc +1"


def test_ecc_unsupported_is_not_a_fault(caplog: pytest.LogCaptureFixture) -> None:
    nv = two_gpus()
    nv.gpus[0].unsupported = {"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows"}
    src, _ = source(nv)
    with caplog.at_level(logging.INFO, logger="controlplane.agent.gpus.nvml"):
        for _ in range(3):
            g0 = src.read()[0]
    assert not g0.faulty
    assert g0.util_gpu == 0.57  # the other fields still come through
    said = [r.getMessage() for r in caplog.records if "not available" in r.getMessage()]
    assert said == [
        "GPU 0: ecc not available (Not Supported)",
        "GPU 0: remapped rows not available (Not Supported)",
    ]  # once each, not on every read


def test_failing_field_reads_as_default_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nv = two_gpus()
    nv.gpus[0].failing = {"nvmlDeviceGetPowerUsage": fk.NVMLError_Unknown()}
    src, _ = source(nv)
    with caplog.at_level(logging.WARNING, logger="controlplane.agent.gpus.nvml"):
        g0 = src.read()[0]
        src.read()
    assert (g0.power_w, g0.power_limit_w, g0.faulty) == (0.0, 700.0, False)
    assert sum("power not available" in r.getMessage() for r in caplog.records) == 1


def test_remapped_row_failure_is_a_fault() -> None:
    nv = two_gpus()
    nv.gpus[1].remapped_rows = (3, 1, True, False)  # pending: a reset will remap
    src, _ = source(nv)
    assert not src.read()[1].faulty
    nv.gpus[1].remapped_rows = (3, 2, False, True)
    g1 = src.read()[1]
    assert (g1.faulty, g1.fault_reason) == (True, "remapped-row failure")


def test_xid_event_marks_only_that_gpu() -> None:
    nv = two_gpus()
    src, _ = source(nv)
    src.read()  # registers the event set
    assert nv.calls["nvmlDeviceRegisterEvents"] == 2
    nv.xid(1, 79)
    g0, g1 = src.read()
    assert not g0.faulty
    assert (g1.faulty, g1.fault_reason) == (True, "xid 79")


def test_application_xids_are_logged_not_faults(caplog: pytest.LogCaptureFixture) -> None:
    nv = two_gpus()
    src, _ = source(nv)
    src.read()
    assert {13, 31, 43, 45} == APP_XIDS
    with caplog.at_level(logging.INFO, logger="controlplane.agent.gpus.nvml"):
        nv.xid(0, 43)
        nv.xid(0, 13)
        assert not src.read()[0].faulty
    assert any("xid 43" in r.getMessage() for r in caplog.records)
    nv.xid(0, 48)  # double-bit ECC error
    assert src.read()[0].fault_reason == "xid 48"


def test_ignored_xids_are_configurable() -> None:
    nv = two_gpus()
    src, _ = source(nv, ignored_xids=())
    src.read()
    nv.xid(0, 13)
    assert src.read()[0].fault_reason == "xid 13"


def test_events_unsupported_still_reads_the_gpus(caplog: pytest.LogCaptureFixture) -> None:
    nv = two_gpus()
    nv.gpus[0].unsupported = {"nvmlDeviceRegisterEvents"}
    src, _ = source(nv)
    with caplog.at_level(logging.WARNING, logger="controlplane.agent.gpus.nvml"):
        assert len(src.read()) == 2
    assert any("GPU 0: XID events unavailable" in r.getMessage() for r in caplog.records)
    nv.xid(1, 79)
    assert src.read()[1].faulty


def test_faults_latch_until_cleared() -> None:
    nv = two_gpus()
    src, wall = source(nv)
    src.read()
    wall.t = 1010.0
    nv.xid(0, 79)
    assert src.read()[0].fault_reason == "xid 79"
    nv.gpus[0].ecc_uncorrected = 1  # a second fault does not replace the first reason
    for _ in range(3):
        g0 = src.read()[0]
        assert (g0.faulty, g0.fault_reason) == (True, "xid 79")
    assert src.clear_faults(1009.0) == []  # a clear older than the fault changes nothing
    assert src.read()[0].faulty
    assert src.clear_faults(1011.0) == [U0]
    g0 = src.read()[0]
    assert not g0.faulty and g0.fault_reason == ""  # ECC re-baselined, XID forgotten
    nv.gpus[0].ecc_uncorrected = 2  # but a new error after the clear counts
    assert src.read()[0].fault_reason == "ecc +1"


def test_persistent_condition_latches_again_after_clear() -> None:
    nv = two_gpus()
    src, wall = source(nv)
    nv.gpus[1].remapped_rows = (0, 1, False, True)
    assert src.read()[1].faulty
    wall.t = 1020.0
    assert src.clear_faults(1015.0) == [U1]
    g1 = src.read()[1]
    assert (g1.faulty, g1.fault_reason) == (True, "remapped-row failure")
    assert src.latch.snapshot()[U1].since == 1020.0


def test_a_new_source_starts_clean() -> None:
    """Restarting the agent clears one-shot faults (the XID is not delivered again)."""
    nv = two_gpus()
    src, _ = source(nv)
    src.read()
    nv.xid(0, 79)
    nv.gpus[0].ecc_uncorrected = 3
    assert src.read()[0].faulty
    src.close()
    again, _ = source(nv)
    assert not again.read()[0].faulty


def test_lost_gpu_is_faulty_and_keeps_its_uuid() -> None:
    nv = two_gpus()
    src, _ = source(nv)
    src.read()
    nv.xid(1, 79)
    nv.gpus[1].lost = True
    g0, g1 = src.read()
    assert not g0.faulty and g0.util_gpu == 0.57
    assert (g1.uuid, g1.faulty, g1.fault_reason) == (U1, True, "xid 79")


def test_gpu_lost_before_start() -> None:
    nv = two_gpus()
    nv.gpus[0].lost = True
    src, _ = source(nv)
    g0, g1 = src.read()
    assert (g0.index, g0.faulty, g0.fault_reason) == (0, True, "gpu lost")
    assert not g1.faulty


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (fk.NVMLError_LibraryNotFound(), "libnvidia-ml.so.1 not found"),
        (fk.NVMLError_DriverNotLoaded(), "driver is not loaded"),
        (fk.NVMLError_NoPermission(), "no permission"),
    ],
)
def test_no_nvml_is_reported_once_and_reads_nothing(
    error: fk.NVMLError, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    nv = FakeNvml([FakeGpu(U0)], init_error=error)
    src = NvmlGpuSource(nv, retry_s=30.0, clock=Clock(0.0))
    with caplog.at_level(logging.INFO, logger="controlplane.agent.gpus.nvml"):
        assert src.read() == ()
        assert src.read() == ()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and words in lines[0] and "publishing no GPU stats" in lines[0]
    assert words in src.problem
    assert nv.calls["nvmlInit"] == 1  # no retry before retry_s


def test_nvml_appearing_later_is_picked_up() -> None:
    mono = Clock(0.0)
    nv = FakeNvml([FakeGpu(U0)], init_error=fk.NVMLError_DriverNotLoaded())
    src = NvmlGpuSource(nv, retry_s=30.0, clock=mono)
    assert src.read() == ()
    nv.init_error = None
    mono.t = 29.0
    assert src.read() == ()
    mono.t = 31.0
    assert [g.uuid for g in src.read()] == [U0]
    assert src.problem == ""


def test_nvml_failing_mid_run_reads_nothing_then_recovers() -> None:
    mono = Clock(0.0)
    nv = two_gpus()
    src = NvmlGpuSource(nv, retry_s=5.0, clock=mono)
    assert len(src.read()) == 2
    nv.gpus[0].failing = {"nvmlDeviceGetMemoryInfo": fk.NVMLError_Uninitialized()}
    assert src.read() == ()
    assert "Uninitialized" in src.problem
    nv.gpus[0].failing = {}
    mono.t = 6.0
    assert len(src.read()) == 2


def test_missing_pynvml_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import controlplane.agent.gpus.nvml as mod

    def no_module() -> object:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(mod, "_load_pynvml", no_module)
    src = NvmlGpuSource()
    assert src.read() == ()
    assert "pynvml is not installed" in src.problem


def test_real_pynvml_without_driver_reads_nothing() -> None:
    """On a machine without a GPU (CI), the real module fails cleanly."""
    src = NvmlGpuSource()
    gpus = src.read()
    if gpus:
        pytest.skip("this machine has NVML and GPUs")
    assert src.problem
