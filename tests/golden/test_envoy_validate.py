"""Every golden case's resources pass ``envoy --mode validate`` (as one static config).

Validate mode does not bind ports or route traffic; ``tests/e2e/test_builders_envoy.py``
sends real requests through the same configs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from controlplane.proxy.runner import envoy_binary
from tests.golden.cases import case_names, case_resources, static_bootstrap


@pytest.mark.parametrize("case", case_names())
def test_envoy_accepts_case(case: str, tmp_path: Path) -> None:
    cfg = tmp_path / f"{case}.json"
    cfg.write_text(json.dumps(static_bootstrap(case_resources(case), admin_port=0)))
    out = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(cfg), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "deprecated" not in log.lower(), log[-3000:]
