"""The ``sim`` GPU source against recorded ``/sim/gpu`` documents (no server)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import httpx
import pytest

from controlplane.agent.gpus.sim import SimGpuSource

UUID = "GPU-6f1c0f4e-2b1c-5b7e-9d1a-0c3e5e7a9b11"
DOC: dict[str, Any] = {
    "boot_id": "b1",
    "gpus": [
        {
            "index": 0,
            "uuid": UUID,
            "name": "NVIDIA H100 80GB HBM3 (simulated)",
            "lost": False,
            "utilization_gpu_pct": 73,
            "utilization_memory_pct": 41,
            "memory_total_bytes": 85899345920,
            "memory_used_bytes": 34359738368,
            "temperature_c": 66,
            "power_mw": 455000,
            "power_limit_mw": 700000,
            "clocks_event_reasons": 0,
            "ecc_uncorrected_volatile": 0,
            "remapped_rows": {
                "correctable": 0, "uncorrectable": 0, "pending": False, "failure": False,
            },
            "xid_events": [{"seq": 1, "xid": 79}],
            "last_fault": "",
        }
    ],
}  # fmt: skip


class Server:
    """Answers ``/sim/gpu`` with ``self.doc`` (or ``self.raw``, or an error)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.doc: Any = copy.deepcopy(DOC)
        self.raw: bytes | None = None
        self.status = 200
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sim/gpu"
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if self.raw is not None:
            return httpx.Response(self.status, content=self.raw)
        return httpx.Response(self.status, json=self.doc)

    def g(self) -> dict[str, Any]:
        gpu: dict[str, Any] = self.doc["gpus"][0]
        return gpu

    def event(self, seq: int, xid: int) -> None:
        self.g()["xid_events"].append({"seq": seq, "xid": xid})


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def src(server: Server) -> SimGpuSource:
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    return SimGpuSource("http://fake:8001/", client=client)


def test_maps_the_document(src: SimGpuSource) -> None:
    (g,) = src.read()
    assert (g.index, g.uuid) == (0, UUID)
    assert (g.util_gpu, g.util_mem) == (0.73, 0.41)
    assert (g.mem_used_bytes, g.mem_total_bytes) == (32 << 30, 80 << 30)
    assert (g.temperature_c, g.power_w, g.power_limit_w) == (66.0, 455.0, 700.0)
    assert not g.throttled
    assert not g.faulty  # the XID in the document happened before the agent looked


def test_throttle_bits_are_decoded(server: Server, src: SimGpuSource) -> None:
    server.g()["clocks_event_reasons"] = 0x60
    assert src.read()[0].throttled
    server.g()["clocks_event_reasons"] = 0x1
    assert not src.read()[0].throttled


def test_new_xid_latches_even_after_the_server_forgets(server: Server, src: SimGpuSource) -> None:
    src.read()
    server.event(2, 79)
    assert src.read()[0].fault_reason == "xid 79"
    server.g()["xid_events"] = []
    assert src.read()[0].faulty
    assert src.clear_faults(2e9) == [UUID]
    assert not src.read()[0].faulty


def test_restarted_server_events_are_new(server: Server, src: SimGpuSource) -> None:
    src.read()
    server.doc["boot_id"] = "b2"
    server.g()["xid_events"] = [{"seq": 1, "xid": 48}]
    assert src.read()[0].fault_reason == "xid 48"


def test_ecc_and_remap_and_lost(server: Server, src: SimGpuSource) -> None:
    src.read()
    server.g()["ecc_uncorrected_volatile"] = 1
    assert src.read()[0].fault_reason == "ecc +1"
    src.clear_faults(2e9)
    assert not src.read()[0].faulty
    server.g()["remapped_rows"]["failure"] = True
    assert src.read()[0].fault_reason == "remapped-row failure"
    server.g()["lost"] = True
    src.clear_faults(2e9)
    (g,) = src.read()
    assert (g.uuid, g.fault_reason) == (UUID, "gpu lost")


def test_more_gpus_keeps_the_latched_faults(server: Server, src: SimGpuSource) -> None:
    src.read()
    server.event(2, 79)
    src.read()
    second = copy.deepcopy(server.g())
    second.update(index=1, uuid="GPU-00000000-0000-0000-0000-000000000001", xid_events=[])
    server.doc["gpus"].append(second)
    g0, g1 = src.read()
    assert g0.faulty and not g1.faulty


@pytest.mark.parametrize(
    "breakage",
    ["down", "status", "garbage", "no_boot", "bad_number", "bool_number", "bad_events"],
)
def test_bad_answers_give_no_gpus_and_one_log_line(
    server: Server, src: SimGpuSource, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(src.read()) == 1
    if breakage == "down":
        server.down = True
    elif breakage == "status":
        server.status = 404
    elif breakage == "garbage":
        server.raw = b"<html>not json"
    elif breakage == "no_boot":
        del server.doc["boot_id"]
    elif breakage == "bad_number":
        server.g()["power_mw"] = -5
    elif breakage == "bool_number":
        server.g()["temperature_c"] = True
    elif breakage == "bad_events":
        server.g()["xid_events"] = [{"seq": "one", "xid": 79}]
    with caplog.at_level(logging.WARNING, logger="controlplane.agent.gpus.sim"):
        assert src.read() == ()
        assert src.read() == ()
    assert sum("no simulated GPU" in r.getMessage() for r in caplog.records) == 1
    server.reset()
    assert len(src.read()) == 1  # and it recovers
