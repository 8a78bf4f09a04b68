"""The Grafana dashboard's queries run by a real Prometheus over a real fleet.

``compose/prometheus/prometheus.yml`` is checked by ``promtool`` and then used as it is,
with only its targets pointed at the local processes (``aixds serve`` with two regions and
the activator, two fake vLLM servers with agents and simulated GPUs, an edge Envoy that
served requests) and a 1 s scrape interval. Every target must be up, both dashboard
variables must get values, and every panel query (Grafana's variables filled in as
Grafana would with "All") must evaluate without error; every panel must show data,
except those listed in ``QUIET_PANELS`` (they count events this fleet does not have).

Needs Prometheus (Debian's ``prometheus`` package: ``make prometheus`` installs it, as
``make test`` does); the test skips, saying so, without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dashboards import (
    PROMETHEUS,
    all_panels,
    label_values,
    load_dashboard,
    query_variables,
    substitute,
    variable_query,
)
from tests.e2e.fleet import Fleet, chat
from tests.support import Procs, RedisServer, free_port, wait_until

pytestmark = pytest.mark.e2e

PROMETHEUS_BIN = shutil.which("prometheus")
PROMTOOL_BIN = shutil.which("promtool")

QUIET_PANELS = {
    "NACKs (increase)": "only when an Envoy rejects a config",
    "Error rate in the rollback window": "only during a rollout",
    "Requests in the rollback window": "only during a rollout",
    "Rollbacks, by model and trigger": "only after a rollback",
    "Placed replicas, by model and state": "only with placement intent",
    "Activator: held requests and outcomes": "only when a request waits for a load",
}
"""Panel title -> why it may be empty on this fleet."""

RATE_INTERVAL = "20s"
"""Grafana's ``$__rate_interval`` for 1 s scrapes and a short range."""


def local_config(targets: dict[str, list[str]]) -> dict[str, Any]:
    """The compose Prometheus config with each job's targets replaced, one for one (same
    job names, paths and labels), and scrapes every second."""
    doc: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    doc["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for job in doc["scrape_configs"]:
        mine = targets.pop(job["job_name"])
        compose = job["static_configs"]
        assert len(compose) == len(mine), job["job_name"]
        job["static_configs"] = [
            {**sc, "targets": [addr]} for sc, addr in zip(compose, mine, strict=True)
        ]
    assert not targets, f"jobs not in {PROMETHEUS}: {sorted(targets)}"
    return doc


def test_every_dashboard_query_runs_on_a_real_prometheus(
    procs: Procs, redis_srv: RedisServer, tmp_path: Path
) -> None:
    if PROMETHEUS_BIN is None or PROMTOOL_BIN is None:
        pytest.skip("no prometheus/promtool: make prometheus (apt-get install prometheus)")
    checked = subprocess.run(
        [PROMTOOL_BIN, "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    fleet = Fleet(procs, redis_srv)
    fleet.start_serve_two_regions(tmp_path)
    reps = [fleet.add_replica("llama", gpu="sim"), fleet.add_replica("llama", gpu="sim")]
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 2)

    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        yaml.safe_dump(
            local_config(
                {
                    "aixds-controlplane": [fleet.api.removeprefix("http://")],
                    "envoy": [f"127.0.0.1:{edge.admin}"],
                    "model-servers": [r.url.removeprefix("http://") for r in reps],
                }
            )
        )
    )
    checked = subprocess.run(
        [PROMTOOL_BIN, "check", "config", str(cfg)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    port = free_port()
    procs.start(
        "prometheus",
        [
            PROMETHEUS_BIN,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    prom = f"http://127.0.0.1:{port}"

    def all_up() -> bool:
        doc = httpx.get(f"{prom}/api/v1/targets", timeout=2).json()
        active = doc["data"]["activeTargets"]
        return len(active) == 4 and all(t["health"] == "up" for t in active)

    wait_until(all_up, 30, what="every Prometheus target up")
    # traffic for the rate() panels, spread over a few scrapes
    for _ in range(12):
        assert chat(edge.url, "llama").status_code == 200
        time.sleep(0.3)

    def query(expr: str) -> list[Any]:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
        doc = r.json()
        assert r.status_code == 200 and doc["status"] == "success", (expr, doc)
        result: list[Any] = doc["data"]["result"]
        return result

    dash = load_dashboard()
    for v in query_variables(dash):
        lv = label_values(variable_query(v))
        assert lv, variable_query(v)
        selector, label = lv
        values = httpx.get(
            f"{prom}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=5
        ).json()["data"]
        if v.get("regex"):
            pattern = re.compile(v["regex"].strip("/"))
            values = sorted({g.group(1) for x in values if (g := pattern.search(x))})
        expected = {"region": ["us"], "model": ["llama"]}[v["name"]]
        assert values == expected, (v["name"], values)

    # rate() over RATE_INTERVAL needs two scrapes of the counters the requests moved
    wait_until(
        lambda: bool(query(f"sum(rate(envoy_cluster_upstream_rq_total[{RATE_INTERVAL}])) > 0")),
        15,
    )
    empty: list[str] = []
    for panel in all_panels(dash):
        exprs = [t["expr"] for t in panel.get("targets", [])]
        if not exprs:
            continue
        shown = [bool(query(substitute(e, RATE_INTERVAL, ".*"))) for e in exprs]
        if not any(shown) and panel["title"] not in QUIET_PANELS:
            empty.append(panel["title"])
    assert empty == [], f"panels with no data on a live fleet: {empty}"
