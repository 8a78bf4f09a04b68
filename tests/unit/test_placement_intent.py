"""The placement part of the intent document: pins, bounds, priority, fallback."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.agent.placement.desired import Desired, DesiredError, parse_desired
from controlplane.fleet.desired import desired_json
from controlplane.intent import (
    Intent,
    IntentError,
    ModelPlacement,
    intent_from_doc,
    intent_to_doc,
)
from tests.rollout_app import MemoryRedis, build


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


AUTH = {"authorization": "Bearer tok"}


def test_api_pins_lists_and_unpins_a_model() -> None:
    redis = MemoryRedis()
    c = TestClient(build(redis=redis).app, raise_server_exceptions=False)
    assert c.get("/v1/placement").json() == {"revision": 0, "pinned": [], "decision": None}
    body = {"min_resident": {"us": 2}, "priority": 5, "fallback": "llama"}
    r = c.put("/v1/placement/qwen", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["pinned"] == [
        {"model": "qwen", "min_resident": {"us": 2}, "max_replicas": 0, "priority": 5,
         "fallback": "llama"}
    ]  # fmt: skip
    redis.strings["aixds:v1:placement"] = '{"at": 1, "decided_by": "x", "models": {}}'
    assert c.get("/v1/placement").json()["decision"]["decided_by"] == "x"
    r = c.delete("/v1/placement/qwen", headers=AUTH)
    assert r.status_code == 200 and r.json()["pinned"] == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ({"min_resident": {"us": -1}}, AUTH, 422),
        ({"min_resident": {"us": 1.5}}, AUTH, 422),
        ({"fallback": "qwen"}, AUTH, 422),
        ({"max_replicas": -2}, AUTH, 422),
        ({"pinned": True}, AUTH, 422),
        ({"min_resident": {"us": 1}}, {}, 401),
    ],
)
def test_api_refuses_bad_placement_writes(
    body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    r = c.put("/v1/placement/qwen", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert c.get("/v1/placement").json()["pinned"] == []  # nothing was stored
