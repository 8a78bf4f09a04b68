"""``--gpu sim``: the simulated GPU of one fake LLM server, read like a real one.

Each read fetches ``GET <server>/sim/gpu`` (the fake server's GPU in NVML's units, see
``controlplane.sim.simgpu``), loads it into a ``fake_nvml.FakeNvml`` and reads that with
``nvml.NvmlGpuSource``: throttle decoding, the ECC baseline, remapped rows, XID events and
fault latching are the code that runs on real GPUs, so the demo and the end-to-end fault
tests exercise it.

As with NVML, only what happens after the agent starts counts: XID events and ECC errors
already present at the first read are history (a remapped-row failure or a lost GPU is a
present condition and counts at once). When the fake server restarts (new ``boot_id``),
its events are all new. An unreachable server or a document that is not a simulated GPU
gives ``()`` and one log line. ``read()`` blocks on HTTP: run it through
``poll.PolledGpuSource``.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from controlplane.agent.gpus.fake_nvml import FakeGpu, FakeNvml
from controlplane.agent.gpus.nvml import NvmlGpuSource
from controlplane.fleet.model import GpuStats

log = logging.getLogger(__name__)

MAX_SIM_GPUS = 64


class SimDocError(ValueError):
    """``/sim/gpu`` did not answer a simulated-GPU document."""


class SimGpuSource:
    """Reads one fake server's simulated GPU(s). Implements ``GpuSource``."""

    def __init__(
        self,
        server_url: str,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.url = server_url.rstrip("/") + "/sim/gpu"
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(0.5, timeout_s)), trust_env=False
        )
        self._owns_client = client is None
        self.fake = FakeNvml()
        self.nvml = NvmlGpuSource(self.fake, retry_s=0.0)
        self._boot: str | None = None
        self._seen = 0
        self._said = ""

    def read(self) -> tuple[GpuStats, ...]:
        try:
            resp = self._client.get(self.url)
            resp.raise_for_status()
            self._load(resp.json())
        except (httpx.HTTPError, ValueError) as e:
            self._say(f"{type(e).__name__}: {e}")
            return ()
        self._say("")
        return self.nvml.read()

    def clear_faults(self, before: float) -> list[str]:
        return self.nvml.clear_faults(before)

    def close(self) -> None:
        self.nvml.close()
        if self._owns_client:
            self._client.close()

    def _say(self, problem: str) -> None:
        if problem != self._said:
            if problem:
                log.warning("%s: no simulated GPU (%s); publishing no GPU stats", self.url, problem)
            else:
                log.info("%s: reading the simulated GPU", self.url)
            self._said = problem

    def _load(self, doc: Any) -> None:
        """Make the fake NVML say what the document says; queue the new XID events."""
        if not isinstance(doc, dict) or not isinstance(doc.get("boot_id"), str):
            raise SimDocError("not a simulated-GPU document (no boot_id)")
        entries = doc.get("gpus")
        if not isinstance(entries, list) or len(entries) > MAX_SIM_GPUS:
            raise SimDocError("not a simulated-GPU document (no gpus list)")
        gpus = [_fake_gpu(e) for e in entries]
        events = [(i, _events(e)) for i, e in enumerate(entries)]
        first = self._boot is None
        if doc["boot_id"] != self._boot:
            self._boot = doc["boot_id"]
            self._seen = 0  # a restarted server numbers its events from 1 again
        if len(gpus) != len(self.fake.gpus) or any(
            a.uuid != b.uuid for a, b in zip(gpus, self.fake.gpus, strict=False)
        ):
            self._replace(gpus)
        else:
            for old, new in zip(self.fake.gpus, gpus, strict=True):
                _update(old, new)
        newest = self._seen
        for index, evs in events:
            for seq, xid in evs:
                if seq > self._seen:
                    newest = max(newest, seq)
                    if not first:
                        self.fake.xid(index, xid)
        self._seen = newest

    def _replace(self, gpus: list[FakeGpu]) -> None:
        """Another set of GPUs: enumerate again, keeping the faults latched so far."""
        if self.fake.gpus:
            log.info("%s: the simulated GPUs changed; enumerating again", self.url)
        latch = self.nvml.latch
        self.nvml.close()
        self.fake = FakeNvml(gpus)
        self.nvml = NvmlGpuSource(self.fake, retry_s=0.0)
        self.nvml.latch = latch


def _int(d: dict[str, Any], key: str, default: int = 0) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise SimDocError(f"{key!r} is not a non-negative integer: {v!r}")
    return v


def _fake_gpu(e: Any) -> FakeGpu:
    if not isinstance(e, dict) or not isinstance(e.get("uuid"), str):
        raise SimDocError("gpus[] entry without a uuid")
    rows = e.get("remapped_rows") or {}
    if not isinstance(rows, dict):
        raise SimDocError("'remapped_rows' is not an object")
    return FakeGpu(
        uuid=e["uuid"][:256],
        name=str(e.get("name", "simulated GPU"))[:256],
        util_gpu=_int(e, "utilization_gpu_pct"),
        util_mem=_int(e, "utilization_memory_pct"),
        mem_total=_int(e, "memory_total_bytes"),
        mem_used=_int(e, "memory_used_bytes"),
        temperature=_int(e, "temperature_c"),
        power_mw=_int(e, "power_mw"),
        power_limit_mw=_int(e, "power_limit_mw"),
        clocks_event_reasons=_int(e, "clocks_event_reasons"),
        ecc_uncorrected=_int(e, "ecc_uncorrected_volatile"),
        remapped_rows=(
            _int(rows, "correctable"),
            _int(rows, "uncorrectable"),
            bool(rows.get("pending", False)),
            bool(rows.get("failure", False)),
        ),
        lost=e.get("lost") is True,
    )


def _events(e: dict[str, Any]) -> list[tuple[int, int]]:
    raw = e.get("xid_events") or []
    if not isinstance(raw, list):
        raise SimDocError("'xid_events' is not a list")
    out = []
    for ev in raw:
        if not isinstance(ev, dict):
            raise SimDocError("xid_events[] entry is not an object")
        out.append((_int(ev, "seq"), _int(ev, "xid")))
    return out


def _update(old: FakeGpu, new: FakeGpu) -> None:
    for name in (
        "name",
        "util_gpu",
        "util_mem",
        "mem_total",
        "mem_used",
        "temperature",
        "power_mw",
        "power_limit_mw",
        "clocks_event_reasons",
        "ecc_uncorrected",
        "remapped_rows",
        "lost",
    ):
        setattr(old, name, getattr(new, name))
