"""Operator drains: the pure changes, what ``decide`` makes of them, and the API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.decide import EnvoyNode, decide
from controlplane.decide.drains import drain, undrain
from controlplane.decide.rollout import ErrorKind, RolloutError
from controlplane.intent import Intent, intent_from_doc, intent_to_doc
from controlplane.ir import Health
from tests.fleetgen import replica
from tests.rollout_app import build

AUTH = {"authorization": "Bearer tok"}
KNOWN = {"n1", "n1/a", "n1/b", "n2", "n2/a"}


def test_drain_and_undrain_a_node_or_a_replica() -> None:
    it = drain(Intent(), "n1", KNOWN)
    it = drain(it, "n2/a", KNOWN)
    assert it.drained == {"n1", "n2/a"}
    assert drain(it, "n1", KNOWN) is it  # already drained: unchanged
    assert undrain(it, "n1").drained == {"n2/a"}
    assert undrain(it, "gone-node").drained == it.drained  # not listed: nothing to undo
    assert intent_from_doc(intent_to_doc(it), 3).drained == it.drained  # stored and read back


@pytest.mark.parametrize(
    ("target", "kind", "code"),
    [
        ("n9", ErrorKind.NOT_FOUND, "unknown_target"),
        ("n1/zz", ErrorKind.NOT_FOUND, "unknown_target"),
        ("", ErrorKind.INVALID, "bad_target"),
        ("a/b/c", ErrorKind.INVALID, "bad_target"),
        ("n1/", ErrorKind.INVALID, "bad_target"),
        (" n1", ErrorKind.INVALID, "bad_target"),
        ("x" * 513, ErrorKind.INVALID, "bad_target"),
    ],
)
def test_bad_or_unknown_targets_are_refused(target: str, kind: ErrorKind, code: str) -> None:
    with pytest.raises(RolloutError) as e:
        drain(Intent(), target, KNOWN)
    assert (e.value.kind, e.value.code) == (kind, code)


def test_a_drained_node_drains_every_replica_of_it_and_only_those() -> None:
    fleet = {r.record.replica_id: r for r in (replica("n1/a"), replica("n1/b", port=8001),
                                               replica("n2/a", port=8002))}  # fmt: skip
    node = EnvoyNode(region="us", zone="us-a")
    for drained, want in (
        ({"n1"}, {"n1/a", "n1/b"}),
        ({"n2/a"}, {"n2/a"}),
        (set(), set()),
    ):
        plan = decide(fleet, Intent(drained=frozenset(drained)), node, 0.0)
        assert [c.name for c in plan.clusters] == ["llama@v1", "llama@v1#affinity"]
        for cluster in plan.clusters:  # the session-affinity cluster drains the same
            health = {e.replica_id: e.health for e in cluster.endpoints}
            assert {r for r, h in health.items() if h is Health.DRAINING} == want
            assert set(health) == set(fleet)  # drained replicas stay in EDS (in flight ends)


def test_api_drains_lists_and_undrains() -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    assert c.get("/v1/drains").json() == {"revision": 0, "drained": []}
    r = c.post("/v1/drains/n1", headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["changed"] and doc["revision"] == 1
    assert doc["drained"] == [{"target": "n1", "kind": "node", "replicas": ["n1/a"]}]
    assert c.post("/v1/drains/n1", headers=AUTH).json()["changed"] is False
    r = c.post("/v1/drains/n3/a", json={"revision": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    listed = c.get("/v1/drains").json()
    assert [(d["target"], d["kind"]) for d in listed["drained"]] == [
        ("n1", "node"),
        ("n3/a", "replica"),
    ]
    r = c.delete("/v1/drains/n1?revision=2", headers=AUTH)
    assert r.status_code == 200 and [d["target"] for d in r.json()["drained"]] == ["n3/a"]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "error"),
    [
        ("POST", "/v1/drains/n1", None, {}, 401, "unauthorized"),
        ("POST", "/v1/drains/nope", None, AUTH, 404, "unknown_target"),
        ("POST", "/v1/drains/a/b/c", None, AUTH, 422, "bad_target"),
        ("POST", "/v1/drains/n1", {"revision": 7}, AUTH, 409, "revision_conflict"),
        ("POST", "/v1/drains/n1", {"revision": -1}, AUTH, 422, None),
        ("DELETE", "/v1/drains/n1?revision=7", None, AUTH, 409, "revision_conflict"),
        ("DELETE", "/v1/drains/n1", None, {}, 401, "unauthorized"),
    ],
)
def test_api_refuses_bad_drain_writes(
    method: str, path: str, body: object, headers: dict[str, str], status: int, error: str | None
) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    r = c.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    if error is not None:
        assert r.json()["error"] == error
    assert c.get("/v1/drains").json()["drained"] == []  # nothing written
