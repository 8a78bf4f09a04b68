"""A model served alike in every live region, or the routes say which region differs."""

from __future__ import annotations

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.region_diff import regions_differ
from controlplane.fleet.model import ModelState, ObservedReplica
from controlplane.intent import Intent
from controlplane.ir import ModelRouteIR
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
