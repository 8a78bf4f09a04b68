"""Golden tests: ``in/<case>.yaml`` (a Plan) -> ``out/<case>.<cds|eds|lds|rds>.yaml``.

``pytest tests/golden --update-golden`` rewrites the outputs and deletes stale ones;
review the diff, the outputs are the spec of what Envoy receives.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.xds import resources
from controlplane.xds.build import build_resources, resource_name
from tests.golden.cases import OUT, case_names, case_plan, case_resources, to_yaml

CASES = case_names()


def _update(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def _expected_files() -> set[str]:
    return {f"{c}.{short}.yaml" for c in CASES for short in resources.SHORT_NAMES.values()}


def test_there_are_cases() -> None:
    assert {"single_model", "two_regions", "canary_sticky", "slow_start"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    plan = case_plan(case)
    assert plan.validate() == []
    res = build_resources(plan)
    assert list(res) == list(resources.SEND_ORDER)
    mismatched = []
    for type_url, msgs in res.items():
        path = OUT / f"{case}.{resources.SHORT_NAMES[type_url]}.yaml"
        text = to_yaml(msgs)
        if _update(request):
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            mismatched.append(path.name)
    assert not mismatched, f"golden outputs differ: {mismatched}; rerun with --update-golden"


def test_no_stale_outputs(request: pytest.FixtureRequest) -> None:
    stale = {p.name for p in OUT.glob("*.yaml")} - _expected_files()
    if _update(request):
        for name in stale:
            (OUT / name).unlink()
    else:
        assert not stale, f"stale golden outputs (rerun with --update-golden): {sorted(stale)}"


@pytest.mark.parametrize("case", CASES)
def test_output_is_sorted_and_order_independent(case: str) -> None:
    """Content hashes must not depend on the order the IR happens to list things in."""
    plan = case_plan(case)
    res = build_resources(plan)
    for msgs in res.values():
        names = [resource_name(m) for m in msgs]
        assert names == sorted(names)

    rng = random.Random(7)
    clusters = [
        dataclasses.replace(c, endpoints=tuple(rng.sample(c.endpoints, len(c.endpoints))))
        for c in plan.clusters
    ]
    other = dataclasses.replace(
        plan,
        clusters=tuple(rng.sample(clusters, len(clusters))),
        route_configs=tuple(reversed(plan.route_configs)),
    )
    again = build_resources(other)
    for type_url, msgs in res.items():
        assert [m.SerializeToString(deterministic=True) for m in msgs] == [
            m.SerializeToString(deterministic=True) for m in again[type_url]
        ]


def test_snapshot_is_consistent() -> None:
    """Every EDS name is a CDS cluster; every listener's RDS name is a route config."""
    for case in CASES:
        res = case_resources(case)
        cds = {c.name for c in res[resources.CLUSTER]}
        assert {cla.cluster_name for cla in res[resources.ENDPOINT]} == cds
        rds = {r.name for r in res[resources.ROUTE]}
        for lis in res[resources.LISTENER]:
            hcm = hcm_pb2.HttpConnectionManager()
            lis.filter_chains[0].filters[0].typed_config.Unpack(hcm)
            assert hcm.rds.route_config_name in rds
