"""A model served alike in every live region, or the routes say which region differs."""

from __future__ import annotations

from dataclasses import replace

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.region_diff import regions_differ
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import ModelRouteIR, RouteConfigIR
from controlplane.xds.route import (
    REGIONS_DIFFER_HEADER,
    VERSION_HEADER,
    build_route_configuration,
)
from tests.fleetgen import fleet, replica

NOW = 50.0
READY = ModelState.READY


def test_the_same_versions_everywhere_do_not_differ() -> None:
    assert regions_differ({"us": {"v1", "v2"}, "eu": ["v2", "v1"]}, {"us", "eu"}) == ""
    assert regions_differ({"us": {"v1"}}, {"us"}) == ""  # one region alone
    assert regions_differ({}, set()) == ""


def test_a_region_lacking_a_version_or_the_model_is_named() -> None:
    serving = {"us": {"v2", "v1"}, "eu": {"v1"}}
    assert regions_differ(serving, {"us", "eu", "ap"}) == "ap=-; eu=v1; us=v1,v2"
    assert regions_differ(serving, {"us", "eu"}) == "eu=v1; us=v1,v2"
    # a region that is not live (lost: not in ``regions``) is left out
    assert regions_differ({"us": {"v1"}, "eu": {"v1"}, "ap": {"v9"}}, {"us", "eu"}) == ""


def _routes(*replicas: ObservedReplica, region: str = "us") -> dict[str, ModelRouteIR]:
    plan = decide(fleet(*replicas), Intent(), EnvoyNode(region=region), NOW)
    return {m.model: m for m in plan.route_configs[0].models}


def _header_names(rcfg: RouteConfigIR) -> set[str]:
    """Every response header the built routes add."""
    out = set()
    for vh in build_route_configuration(rcfg).virtual_hosts:
        for r in vh.routes:
            out |= {h.header.key for h in r.response_headers_to_add}
            for c in r.route.weighted_clusters.clusters:
                out |= {h.header.key for h in c.response_headers_to_add}
    return out


def test_version_headers_off_names_no_version_or_region() -> None:
    fl = fleet(
        replica("us1/a", region="us", models=(("llama", "v1", READY), ("llama", "v2", READY))),
        replica("eu1/a", region="eu", models=(("llama", "v1", READY),)),
    )
    on = decide(fl, Intent(), EnvoyNode(region="us"), NOW).route_configs[0]
    off = decide(fl, Intent(version_headers=False), EnvoyNode(region="us"), NOW).route_configs[0]
    assert _header_names(on) == {VERSION_HEADER, REGIONS_DIFFER_HEADER}
    assert not off.version_headers and _header_names(off) == set()
    # the routes themselves are the same
    assert replace(off, version_headers=True) == on


def test_decide_marks_the_routes_of_a_model_whose_regions_differ() -> None:
    routes = _routes(
        replica("us1/a", region="us", models=(("llama", "v1", READY), ("llama", "v2", READY))),
        replica("eu1/a", region="eu", models=(("llama", "v1", READY),)),
        # an alias served only in us: its failover region does not answer to it
        replica("us2/a", region="us", models=(("llama-8b", "v1", READY), ("qwen", "q1", READY))),
        replica("eu2/a", region="eu", models=(("qwen", "q1", READY),)),
    )
    assert routes["llama"].regions_differ == "eu=v1; us=v1,v2"
    assert routes["llama-8b"].regions_differ == "eu=-; us=v1"
    assert routes["qwen"].regions_differ == ""
    # every weighted cluster names its version (the x-aixds-version response header)
    assert {w.cluster: w.version for w in routes["llama"].clusters} == {"llama@v1": "v1"}


def test_only_replicas_taking_traffic_count() -> None:
    routes = _routes(
        replica("us1/a", region="us"),
        replica("eu1/a", region="eu", models=(("llama", "v1", ModelState.LOADING),)),
        replica("eu2/a", region="eu", draining=True),
    )
    assert routes["llama"].regions_differ == "eu=-; us=v1"
    assert (
        _routes(replica("us1/a", region="us"), replica("eu1/a", region="eu"))[
            "llama"
        ].regions_differ
        == ""
    )
