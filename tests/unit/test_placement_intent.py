"""The placement part of the intent document: pins, bounds, priority, fallback."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from controlplane.agent.placement.desired import Desired, DesiredError, parse_desired
from controlplane.fleet.desired import desired_json
from controlplane.intent import (
    Intent,
    IntentError,
    ModelPlacement,
    intent_from_doc,
    intent_to_doc,
)


def test_placement_round_trips_through_the_stored_document() -> None:
    it = Intent(
        placement=MappingProxyType(
            {
                "llama-70b": ModelPlacement(
                    min_resident=MappingProxyType({"": 1, "eu": 2}),
                    max_replicas=4,
                    priority=10,
                    fallback="llama-8b",
                )
            }
        )
    )
    back = intent_from_doc(intent_to_doc(it), 7)
    assert back.placement == it.placement
    p = back.placement["llama-70b"]
    assert (p.min_in("eu"), p.min_in("us"), ModelPlacement().min_in("us")) == (2, 1, 0)


def test_an_older_document_without_placement_reads_as_none() -> None:
    doc = intent_to_doc(Intent())
    del doc["placement"]
    assert intent_from_doc(doc, 1).placement == {}


@pytest.mark.parametrize(
    "entry",
    [
        {"min_resident": {"us": -1}},
        {"min_resident": {"us": 1.5}},
        {"min_resident": {"us": True}},
        {"max_replicas": "4"},
        {"priority": "high"},
        {"fallback": "m"},
        {"fallback": 3},
        "pinned",
    ],
)
def test_a_bad_placement_entry_is_refused(entry: Any) -> None:
    doc = intent_to_doc(Intent())
    doc["placement"] = {"m": entry}
    with pytest.raises(IntentError):
        intent_from_doc(doc, 1)


def test_desired_sleeping_round_trips_and_is_loaded() -> None:
    d = parse_desired("m", '{"state": "sleeping"}')
    assert (d.loaded, d.sleeping) == (True, True)
    assert parse_desired("m", desired_json(d)) == d
    assert desired_json(Desired(model="m", loaded=False)) == '{"state":"unloaded"}'
    with pytest.raises(DesiredError):
        parse_desired("m", '{"state": "asleep"}')
