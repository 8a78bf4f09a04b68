"""``aixds demo`` starts the whole fleet, serves traffic without errors and stops everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_serves_and_cleans_up(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "demo",
            "--duration",
            "7",
            "--rate",
            "30",
            "--listen-port",
            "0",
            "--log-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    screens = out.stdout.split("\x1b[2J\x1b[H")
    last = screens[-1]
    assert "aixds demo: live fleet" in last
    assert last.count("/vllm-") == 3
    assert "errors in last 5 s: 0" in last
    assert "cold start: qwen (any replica can load it in 8 s)" in last
    assert "shared GPU: phi and gemma (40 GB each, a server each) on one 80 GB GPU" in last
    assert "stopping every process the demo started" in out.stdout
    # every child is gone: nothing listens on the ports the demo logged
    pids = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert pids.strip() == ""
