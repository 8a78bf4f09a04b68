"""compose/'s Grafana dashboard and Prometheus config against what aixds really exports.

The aixds names come from the metric classes ``aixds serve`` builds, instantiated on one
registry as serve does; the model-server names from the fake vLLM server's own registry;
Envoy's from the documented ``ENVOY_STATS`` list (checked against a real Envoy in
tests/e2e/test_grafana_metrics.py). Renaming a metric, or a dashboard query naming one
that does not exist, fails here.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controlplane.activator.app import ActivatorMetrics
from controlplane.runtime.autorollback import GuardMetrics
from controlplane.runtime.fleet_gauges import FleetGauges
from controlplane.runtime.fleet_watch import FleetMetrics
from controlplane.runtime.intent_watch import IntentMetrics
from controlplane.runtime.placement_loop import PlacementMetrics
from controlplane.runtime.reconcile import ReconcileMetrics
from controlplane.runtime.regions import RegionMetrics
from controlplane.runtime.rollout_ops import RolloutMetrics
from controlplane.runtime.serving_version import ServingVersionMetrics
from controlplane.sim.engine import Engine, Knobs
from controlplane.sim.metrics import ServerMetrics
from controlplane.xds.ads import AdsMetrics
from controlplane.xds.lrs import LrsMetrics
from tests.dashboards import (
    COMPOSE,
    COMPOSE_FILE,
    ENVOY_STATS,
    PROMETHEUS,
    all_panels,
    exposition_names,
    expressions,
    load_dashboard,
    load_yaml,
    metric_names,
    provisioned_datasource_uids,
    unknown_names,
    used_names,
)


def aixds_names() -> set[str]:
    """Every name ``aixds serve`` can export (one registry, the classes serve builds)."""
    registry = CollectorRegistry()
    for metrics in (
        FleetMetrics,
        RegionMetrics,
        IntentMetrics,
        ReconcileMetrics,
        LrsMetrics,
        AdsMetrics,
        RolloutMetrics,
        ServingVersionMetrics,
        GuardMetrics,
        PlacementMetrics,
        ActivatorMetrics,
    ):
        metrics(registry)
    FleetGauges(registry, dict, dict)
    return exposition_names(generate_latest(registry).decode())


def model_server_names() -> set[str]:
    m = ServerMetrics("llama")
    m.watch(Engine(Knobs()))
    return exposition_names(m.render().decode())


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def known() -> set[str]:
    return aixds_names() | model_server_names() | ENVOY_STATS


def test_dashboard_has_grafana_essentials(dash: dict[str, Any]) -> None:
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    uids = provisioned_datasource_uids()
    assert uids == {"aixds-prometheus"}
    for p in panels:
        g = p["gridPos"]
        assert {"x", "y", "w", "h"} <= g.keys(), p["title"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] in ("row", "text"):
            continue
        assert p["datasource"]["uid"] in uids, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t.get("datasource", p["datasource"])["uid"] in uids
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] in uids


def test_panels_do_not_overlap(dash: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_variables_used_are_defined(dash: dict[str, Any]) -> None:
    defined = {v["name"] for v in dash["templating"]["list"]}
    for where, expr in expressions(dash):
        for var in re.findall(r"\$(\w+)", expr):
            assert var.startswith("__") or var in defined, f"{where}: ${var}"


def test_every_query_parses_and_names_an_exported_metric(
    dash: dict[str, Any], known: set[str]
) -> None:
    assert unknown_names(dash, known) == {}


def test_the_check_catches_a_renamed_metric(dash: dict[str, Any], known: set[str]) -> None:
    broken = copy.deepcopy(dash)
    target = next(p for p in broken["panels"] if p.get("targets"))["targets"][0]
    target["expr"] = target["expr"].replace("aixds_xds_convergence_seconds", "aixds_xds_conv")
    assert "aixds_xds_conv_bucket" in set().union(*unknown_names(broken, known).values())
    # and a name the exporters lose: the dashboard's names are not all in a smaller set
    assert unknown_names(dash, known - {"aixds_xds_nacks_total"})


def test_the_parser_reads_names_not_functions_labels_or_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, type) (rate(a_bucket{type=~"$model", le!="x"}'
        "[$__rate_interval]))) / on (group) group_left sum without (b) (c offset 5m)"
        ' or vector(0) + max_over_time(vllm:d[10m:1m]) > bool {__name__="e"}'
    )
    assert metric_names(expr) == {"a_bucket", "c", "vllm:d", "e"}
    with pytest.raises(ValueError):
        metric_names('sum(rate(a{job="x"}[5m]) by')
    with pytest.raises(ValueError):
        metric_names('{job="x"}')


def test_dashboard_covers_the_issue_topics(dash: dict[str, Any]) -> None:
    names = used_names(dash)
    for needed in (
        "aixds_xds_convergence_seconds_bucket",
        "aixds_reconcile_seconds_bucket",
        "aixds_xds_pushes_total",
        "aixds_xds_nacks_total",
        "aixds_xds_connected_envoys",
        "aixds_rollout_canary_percent",
        "aixds_rollbacks_total",
        "aixds_placement_replicas",
        "aixds_region_state",
        "envoy_cluster_membership_healthy",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_time_bucket",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "aixds_endpoint_weight",
        "aixds_endpoint_health",
        "aixds_gpu_utilization_ratio",
        "aixds_gpu_faulty",
        "aixds_gpu_throttled",
    ):
        assert needed in names, needed
    assert names >= ENVOY_STATS, "ENVOY_STATS lists a stat the dashboard no longer uses"


def _service_ports(compose: dict[str, Any]) -> dict[str, set[int]]:
    """compose service -> the ports its command listens on (``HOST:PORT`` arguments)."""
    out: dict[str, set[int]] = {}
    for name, svc in compose["services"].items():
        args = " ".join(str(a) for a in svc.get("command", []))
        out[name] = {int(p) for p in re.findall(r"0\.0\.0\.0:(\d+)", args)}
    envoy = load_yaml(COMPOSE / "envoy-edge-us.yaml")
    out["envoy"].add(envoy["admin"]["address"]["socket_address"]["port_value"])
    return out


def test_prometheus_scrapes_every_exporter_by_compose_service_name() -> None:
    prom = load_yaml(PROMETHEUS)
    compose = load_yaml(COMPOSE_FILE)
    ports = _service_ports(compose)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert len(jobs) == len(prom["scrape_configs"]), "job names must be unique"
    assert jobs["aixds-controlplane"]["metrics_path"] == "/metrics"
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    scraped: set[str] = set()
    for job in jobs.values():
        assert job["metrics_path"].startswith("/")
        for sc in job["static_configs"]:
            assert sc["labels"]["fleet_region"], job["job_name"]  # the dashboard's $region
            for target in sc["targets"]:
                host, _, port = target.rpartition(":")
                assert host in compose["services"], target
                assert int(port) in ports[host], f"{target}: {host} listens on {ports[host]}"
                scraped.add(host)
    exporters = {
        n
        for n, svc in compose["services"].items()
        if svc.get("command") and str(svc["command"][0]) in ("serve", "fake-llm", "envoy")
    }
    assert exporters and exporters <= scraped


def test_compose_brings_up_prometheus_and_grafana_provisioned() -> None:
    compose = load_yaml(COMPOSE_FILE)
    prom, graf = compose["services"]["prometheus"], compose["services"]["grafana"]
    for svc, image in ((prom, "prom/prometheus:"), (graf, "grafana/grafana:")):
        assert svc["image"].startswith(image) and not svc["image"].endswith(":latest")
        assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
        for volume in svc["volumes"]:
            src = volume.split(":")[0]
            assert (COMPOSE / src).exists(), volume
    assert any("prometheus.yml:/etc/prometheus/prometheus.yml" in v for v in prom["volumes"])
    env = graf["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"]}  # source -> target
    src = next(s for s, dst in mounts.items() if home.startswith(dst + "/"))
    assert (COMPOSE / src / home.rsplit("/", 1)[1]).is_file()
    # the datasource points at the compose service, the provider at the mounted folder
    ds = load_yaml(COMPOSE / "grafana/provisioning/datasources/prometheus.yaml")
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    provider = load_yaml(COMPOSE / "grafana/provisioning/dashboards/aixds.yaml")["providers"][0]
    assert provider["options"]["path"] in mounts.values()
    json.loads((COMPOSE / "grafana/dashboards/aixds.json").read_text())


def test_exposition_names_are_the_names_prometheus_stores() -> None:
    text = (
        "# TYPE aixds_x_total counter\n"  # prometheus-client, a labelled counter never set
        "# TYPE aixds_y_seconds histogram\n"
        "# TYPE envoy_cluster_upstream_rq_retry counter\n"  # Envoy: no _total added
        'envoy_cluster_upstream_rq_retry{envoy_cluster_name="llama@v1"} 0\n'
        'vllm:num_requests_waiting{engine="0"} 3.0\n'
    )
    assert exposition_names(text) == {
        "aixds_x_total",
        "aixds_y_seconds_bucket",
        "aixds_y_seconds_sum",
        "aixds_y_seconds_count",
        "envoy_cluster_upstream_rq_retry",
        "vllm:num_requests_waiting",
    }
