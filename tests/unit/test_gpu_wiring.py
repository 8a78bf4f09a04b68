from __future__ import annotations

import subprocess
import sys

from controlplane.agent.gpus.selection import GpuSelection, SelectedGpus, parse_server_gpus
from controlplane.agent.gpus.wiring import NodeGpus
from controlplane.agent.servers.discovery import parse_server
from controlplane.fleet.model import GpuStats


class FourGpus:
    def read(self) -> tuple[GpuStats, ...]:
        return tuple(GpuStats(index=i, uuid=f"GPU-{i}") for i in range(4))


def test_server_gpus_narrow_a_servers_source_by_port() -> None:
    gpus = NodeGpus("none", parse_server_gpus(["8001=1,3"]))
    mine = gpus.for_server(parse_server("vllm=http://127.0.0.1:8001"))
    other = gpus.for_server(parse_server("vllm=http://127.0.0.1:8002"))
    assert isinstance(mine, SelectedGpus) and mine.selection == GpuSelection.parse("1,3")
    assert not isinstance(other, SelectedGpus)
    picked = SelectedGpus(FourGpus(), mine.selection).read()
    assert [g.index for g in picked] == [1, 3]
    gpus.close()


def test_bad_server_gpus_flag_exits_2_with_a_reason() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "agent",
            "--redis",
            "redis://127.0.0.1:1/0",
            "--node",
            "n",
            "--region",
            "r",
            "--zone",
            "z",
            "--server",
            "vllm=http://127.0.0.1:8001",
            "--server-gpus",
            "8001",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "--server-gpus expects PORT=GPUS" in out.stderr
