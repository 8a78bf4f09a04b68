"""The placement loop's pure helpers: cluster -> model, managed models, the lead time."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from controlplane.fleet.model import AvailableModel, ObservedReplica
from controlplane.intent import Intent, ModelPlacement
from controlplane.runtime.placement_loop import lead_s, managed_models, model_of
from tests.fleetgen import fleet, replica


def offering(obs: ObservedReplica, *avail: AvailableModel) -> ObservedReplica:
    return dataclasses.replace(obs, record=dataclasses.replace(obs.record, available=avail))


def test_load_reports_count_for_the_model_of_either_cluster_and_not_the_activator() -> None:
    assert model_of("llama@v1") == "llama"
    assert model_of("llama@v2#affinity") == "llama"
    assert model_of("org/model@name@v1") == "org/model@name"
    assert model_of("aixds-activator") is None
    assert model_of("@v1") is None


def test_managed_models_are_the_available_and_the_placed_ones() -> None:
    f = fleet(offering(replica("n1/0"), AvailableModel("qwen")), replica("n2/0"))
    it = Intent(placement=MappingProxyType({"phi": ModelPlacement()}))
    assert managed_models(f, it) == {"qwen", "phi"}  # never the fixed base model "llama"


def test_the_lead_is_the_longest_measured_load_else_the_default() -> None:
    f = fleet(
        offering(replica("n1/0"), AvailableModel("qwen", load_s=12.0)),
        offering(replica("n2/0"), AvailableModel("qwen", load_s=30.0), AvailableModel("phi")),
    )
    assert lead_s(f, "qwen", 60.0) == 30.0
    assert lead_s(f, "phi", 60.0) == 60.0  # offered, never measured
    assert lead_s(f, "nowhere", 45.0) == 45.0
