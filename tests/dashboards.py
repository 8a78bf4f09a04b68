"""The Grafana dashboard and Prometheus config under ``compose/``, read the way the tests
check them: every PromQL expression parsed by a real PromQL parser (``promql-parser``)
and reduced to the metric names it selects, and the names a Prometheus scrape of a text
exposition holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "aixds.json"
DATASOURCES = COMPOSE / "grafana" / "provisioning" / "datasources"
PROMETHEUS = COMPOSE / "prometheus" / "prometheus.yml"
COMPOSE_FILE = COMPOSE / "docker-compose.yaml"

# Envoy's own stats the dashboard reads, as Envoy's admin /stats/prometheus names them
# (``envoy_`` + the stat with dots as underscores; the cluster and the response-code
# class are labels: envoy_cluster_name, envoy_response_code_class). A name used in the
# dashboard must be listed here, and tests/e2e/test_grafana_metrics.py finds each of them
# in a real Envoy's /stats/prometheus.
ENVOY_STATS = frozenset(
    {
        "envoy_control_plane_connected_state",
        "envoy_cluster_membership_total",
        "envoy_cluster_membership_healthy",
        "envoy_cluster_membership_degraded",
        "envoy_cluster_outlier_detection_ejections_active",
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_time_bucket",
        "envoy_cluster_upstream_rq_retry",
        "envoy_cluster_upstream_rq_pending_overflow",
        "envoy_cluster_upstream_rq_active",
    }
)

# Grafana's interval variables become a duration, any other ``$var``/``${var}``/
# ``[[var]]`` a plain word: both parse wherever Grafana would put their value (a range,
# a label value inside quotes). An unquoted variable elsewhere fails to parse, as it
# should.
_INTERVAL_VARS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{__\w+\}")
_VARS = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)

# What a ``# TYPE`` line adds where a family has no sample yet (a labelled metric never
# set): its sample names in the text format Prometheus scrapes (prometheus-client writes
# a counter's TYPE line with ``_total`` already; Envoy's counters have no suffix at all).
_TYPE_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)")
_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def provisioned_datasource_uids() -> set[str]:
    uids: set[str] = set()
    for f in sorted(DATASOURCES.glob("*.yaml")):
        for ds in load_yaml(f)["datasources"]:
            uids.add(ds["uid"])
    return uids


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])


def expressions(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for p in all_panels(dash):
        for t in p.get("targets", []):
            yield f"panel {p['id']} {p.get('title', '')!r} {t.get('refId')}", t["expr"]
    for v in query_variables(dash):
        q = variable_query(v)
        lv = label_values(q)
        # label_values(selector, label) is Grafana's, not PromQL: check its selector.
        yield f"variable {v['name']}", lv[0] if lv else q


def query_variables(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The dashboard's variables whose values come from a query."""
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            yield v


def variable_query(v: dict[str, Any]) -> str:
    q = v["query"]
    return str(q["query"] if isinstance(q, dict) else q)


def label_values(query: str) -> tuple[str, str] | None:
    """(selector, label) of Grafana's ``label_values(selector, label)``, else ``None``."""
    m = _LABEL_VALUES.match(query)
    return (m.group(1), m.group(2)) if m else None


def substitute(expr: str, interval: str = "5m", value: str = "x") -> str:
    """``expr`` with Grafana's interval variables as ``interval`` and every other variable
    as ``value`` (``x`` parses as a label value; Grafana sends ``.*`` for "All")."""
    expr = _INTERVAL_VARS.sub(interval, expr)
    return _VARS.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects; raises ValueError where it does not parse or a
    selector names no metric (``{job="x"}``: nothing this test could check)."""
    names: set[str] = set()
    nameless: list[str] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                for m in node.matchers.matchers:
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                        name = m.value
            if name is None:
                nameless.append(str(node))
            else:
                names.add(name)

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    if nameless:
        raise ValueError(f"selector without a metric name: {nameless}")
    return names


def exposition_names(text: str) -> set[str]:
    """The metric names a Prometheus scrape of this text exposition (format 0.0.4) holds:
    each sample's name as written, and for each family its sample names from its type.

    Read as text, not with prometheus-client's parser: that one renames a counter's
    samples to ``<name>_total``, which Prometheus does not do to Envoy's counters.
    """
    out: set[str] = set()
    for line in text.splitlines():
        if m := _TYPE_LINE.match(line):
            name, kind = m.groups()
            out.update(name + s for s in _TYPE_SUFFIXES.get(kind, ("",)))
        elif m := _SAMPLE_LINE.match(line):
            out.add(m.group(1))
    return out


def unknown_names(dash: dict[str, Any], known: set[str]) -> dict[str, set[str]]:
    """where -> names used there that ``known`` lacks."""
    out: dict[str, set[str]] = {}
    for where, expr in expressions(dash):
        missing = metric_names(expr) - known
        if missing:
            out[where] = missing
    return out


def used_names(dash: dict[str, Any]) -> set[str]:
    return {n for _, expr in expressions(dash) for n in metric_names(expr)}
