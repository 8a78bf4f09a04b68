"""The rollout API in-process (memory stores): auth, validation, errors, the whole flow."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from controlplane.fleet.intent_store import StoredIntent
from tests.rollout_app import build

AUTH = {"authorization": "Bearer tok"}


def client(token: str = "tok") -> tuple[TestClient, Any]:
    a = build(token)
    return TestClient(a.app, raise_server_exceptions=False), a


def err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["error"] == code, body
    assert body["detail"]
    return body


def test_a_server_without_token_is_read_only_and_says_how_to_enable_writes() -> None:
    c, _ = client(token="")
    assert c.get("/v1/rollouts").status_code == 200
    body = err(
        c.post("/v1/rollouts/llama", json={"to": "v2"}, headers=AUTH), 403, "writes_disabled"
    )
    assert "--api-token" in body["detail"] and "AIXDS_API_TOKEN" in body["detail"]


def test_writes_need_the_right_bearer_token() -> None:
    c, a = client()
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic dG9rOg=="}):
        r = c.post("/v1/rollouts/llama", json={"to": "v2"}, headers=headers)
        err(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    # auth is checked before the body: an anonymous bad body is still 401
    err(c.post("/v1/rollouts/llama/percent", json={"percent": 900}), 401, "unauthorized")
    assert a.store.stored.revision == 0  # nothing written


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rollouts/llama", {"to": "v2", "canary_percent": 150}),
        ("/v1/rollouts/llama", {"to": "v2", "canary_percent": -1}),
        ("/v1/rollouts/llama", {"canary_percent": 10}),
        ("/v1/rollouts/llama", {"to": "", "canary_percent": 10}),
        ("/v1/rollouts/llama", {"to": "v2", "bogus": 1}),
        ("/v1/rollouts/llama", {"to": 2}),
        ("/v1/rollouts/llama", [1, 2]),
        ("/v1/rollouts/llama/percent", {"percent": "ten"}),
        ("/v1/rollouts/llama/percent", {}),
        ("/v1/rollouts/llama/promote", {"revision": -3}),
        ("/v1/rollouts/llama/rollback", {"reason": 5}),
    ],
)
def test_bad_bodies_get_422_with_what_is_wrong(path: str, body: Any) -> None:
    c, _ = client()
    body_out = err(c.post(path, json=body, headers=AUTH), 422, "invalid_request")
    assert "body" in body_out["detail"]


def test_non_json_and_nan_bodies_get_422() -> None:
    c, _ = client()
    h = {**AUTH, "content-type": "application/json"}
    err(c.post("/v1/rollouts/llama", content=b"{not json", headers=h), 422, "invalid_request")
    nan = b'{"to": "v2", "canary_percent": NaN}'
    err(c.post("/v1/rollouts/llama", content=nan, headers=h), 422, "invalid_request")


def test_unknown_names_and_unready_versions_are_4xx() -> None:
    c, _ = client()
    body = err(
        c.post("/v1/rollouts/mistral", json={"to": "v1"}, headers=AUTH), 404, "unknown_model"
    )
    assert "llama" in body["detail"]
    body = err(
        c.post("/v1/rollouts/llama", json={"to": "v9"}, headers=AUTH), 404, "unknown_version"
    )
    assert "v1, v2, v3" in body["detail"]
    err(c.get("/v1/rollouts/mistral"), 404, "unknown_model")
    err(c.get("/v1/models/mistral"), 404, "unknown_model")
    r = c.post("/v1/rollouts/llama", json={"to": "v3", "canary_percent": 5}, headers=AUTH)
    assert "0 ready" in err(r, 409, "not_enough_ready_replicas")["detail"]
    err(c.post("/v1/rollouts/llama/promote", headers=AUTH), 409, "no_canary")
    err(c.post("/v1/rollouts/llama/rollback", headers=AUTH), 409, "nothing_to_roll_back")
    err(c.get("/v1/nothing-here"), 404, "not_found")
    err(c.delete("/v1/rollouts/llama"), 405, "method_not_allowed")


def test_canary_set_promote_rollback_flow() -> None:
    c, a = client()
    r = c.post("/v1/rollouts/llama", json={"to": "v2", "canary_percent": 10}, headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["revision"] == 1 and doc["changed"] and doc["converged"]
    assert doc["rollout"]["traffic"] == {"v1": 90.0, "v2": 10.0}
    assert doc["rollout"]["canary"] == "v2"

    r = c.post("/v1/rollouts/llama/percent", json={"percent": 50, "revision": 1}, headers=AUTH)
    assert r.json()["rollout"]["traffic"] == {"v1": 50.0, "v2": 50.0}

    r = c.post("/v1/rollouts/llama/promote", headers=AUTH)
    ro = r.json()["rollout"]
    assert (ro["stable"], ro["previous"], ro["traffic"]) == ("v2", "v1", {"v2": 100.0})
    assert ro["draining"]["v1"]["phase"] == "settling"

    models = {m["model"]: m for m in c.get("/v1/models").json()["models"]}
    roles = {v["version"]: v["role"] for v in models["llama"]["versions"]}
    assert roles == {"v1": "draining", "v2": "stable", "v3": "idle"}
    assert models["llama"]["version_header"] == "x-model-version"
    assert models["qwen"]["rollout"]["stable"] == "q1"

    r = c.post("/v1/rollouts/llama/rollback", json={"reason": "p99 latency"}, headers=AUTH)
    lr = r.json()["rollout"]["last_rollback"]
    assert lr["from_version"] == "v2" and lr["to_version"] == "v1"
    assert (lr["reason"], lr["trigger"]) == ("p99 latency", "manual")
    assert c.get("/v1/rollouts/llama").json()["traffic"] == {"v1": 100.0}
    stored = json.loads(a.store.stored.doc)
    assert stored["rollouts"]["llama"]["last_rollback"]["reason"] == "p99 latency"
    assert c.get("/v1/intent").json()["revision"] == a.store.stored.revision == 4
    metrics = c.get("/metrics").text
    assert 'aixds_rollbacks_total{model="llama",trigger="manual"} 1.0' in metrics
    assert 'aixds_rollout_changes_total{action="promote",result="ok"} 1.0' in metrics


def test_noop_change_writes_nothing() -> None:
    c, a = client()
    r = c.post("/v1/rollouts/llama", json={"to": "v1"}, headers=AUTH)
    assert r.json()["changed"] and a.store.stored.revision == 1  # pins v1
    r = c.post("/v1/rollouts/llama", json={"to": "v1"}, headers=AUTH)
    assert not r.json()["changed"] and a.store.stored.revision == 1


async def test_concurrent_writers_on_the_same_revision_one_gets_409() -> None:
    a = build()
    transport = httpx.ASGITransport(app=a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        first = {"to": "v2", "canary_percent": 10, "revision": 0}
        second = {"to": "v2", "canary_percent": 20, "revision": 0}
        r1, r2 = await asyncio.gather(
            c.post("/v1/rollouts/llama", json=first, headers=AUTH),
            c.post("/v1/rollouts/llama", json=second, headers=AUTH),
        )
    statuses = sorted([r1.status_code, r2.status_code])
    assert statuses == [200, 409], (r1.text, r2.text)
    loser = r1 if r1.status_code == 409 else r2
    assert loser.json()["error"] == "revision_conflict" and loser.json()["revision"] == 1


def test_redis_down_is_503_not_500() -> None:
    c, a = client()
    a.store.fail = ConnectionError("Redis is down")
    r = c.post("/v1/rollouts/llama", json={"to": "v2"}, headers=AUTH)
    err(r, 503, "redis_unavailable")
    assert r.headers["retry-after"] == "1"


def test_a_bug_is_a_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    c, a = client()

    async def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("boom")

    a.service.change = broken  # type: ignore[method-assign]
    err(c.post("/v1/rollouts/llama", json={"to": "v2"}, headers=AUTH), 500, "internal")
    assert "boom" in caplog.text


def test_intent_lost_by_redis_is_restored_before_a_write() -> None:
    c, a = client()
    c.post("/v1/rollouts/llama", json={"to": "v2", "canary_percent": 10}, headers=AUTH)
    kept = a.store.stored
    a.store.delete()
    r = c.post("/v1/rollouts/llama/percent", json={"percent": 20}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert a.store.stored.revision == kept.revision + 1 and a.store.stored.epoch == kept.epoch
    assert r.json()["rollout"]["traffic"] == {"v1": 80.0, "v2": 20.0}


async def test_guard_rolls_back_a_failing_canary_and_says_why() -> None:
    a = build()
    transport = httpx.ASGITransport(app=a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post(
            "/v1/rollouts/llama", json={"to": "v2", "canary_percent": 10}, headers=AUTH
        )
        started = r.json()["rollout"]["started_at"]
        sec = int(started) + 1
        await a.loads.add({(sec, "llama@v1"): (500, 0), (sec, "llama@v2"): (35, 15)})
        a.guard._clock = lambda: sec + 0.5  # the load is in the window
        await a.guard.tick()
        assert a.guard.leader
        ro = (await c.get("/v1/rollouts/llama")).json()
        assert ro["traffic"] == {"v1": 100.0} and ro["canary"] is None
        lr = ro["last_rollback"]
        assert lr["trigger"] == "auto" and "error rate 30.0% (15/50)" in lr["reason"]
        metrics = (await c.get("/metrics")).text
        assert 'aixds_rollbacks_total{model="llama",trigger="auto"} 1.0' in metrics
        assert "aixds_rollback_leader 1.0" in metrics
        # the audit log says who did what: the operator started, the control plane rolled back
        log = (await c.get("/v1/audit")).json()["entries"]
        assert [(e["who"], e["action"], e["target"]) for e in log] == [
            ("api-token", "start", "llama"),
            ("controlplane:auto-rollback", "rollback", "llama"),
        ]
        assert log[1]["old"]["rollouts"]["llama"]["canary"] == "v2"
        assert log[1]["new"]["rollouts"]["llama"]["canary"] == ""
        assert log[1]["revision"] == log[0]["revision"] + 1


async def test_guard_judges_but_does_not_act_without_the_lock() -> None:
    a = build()
    a.guard_lock.holder_id = "another-replica"
    transport = httpx.ASGITransport(app=a.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        await c.post("/v1/rollouts/llama", json={"to": "v2", "canary_percent": 10}, headers=AUTH)
        sec = int(time.time()) + 1
        await a.loads.add({(sec, "llama@v1"): (500, 0), (sec, "llama@v2"): (35, 15)})
        a.guard._clock = lambda: sec + 0.5
        await a.guard.tick()
        ro = (await c.get("/v1/rollouts/llama")).json()
        assert ro["canary"] == "v2" and ro["health"]["rollback"] is True
        guard = (await c.get("/v1/rollouts")).json()["guard"]
        assert guard["acting"] is False and guard["lock_holder"] == "another-replica"


def test_watcher_ignores_older_revisions_of_the_same_epoch() -> None:
    a = build()
    w = a.intents
    doc = '{"schema": 1, "rollouts": {"llama": {"stable": "v2"}}}'
    assert w.adopt(StoredIntent(5, "e1", doc))
    assert not w.adopt(StoredIntent(4, "e1", '{"schema": 1}'))
    assert w.current().rollouts["llama"].stable == "v2"
    assert w.adopt(StoredIntent(1, "e2", '{"schema": 1}'))  # a new history
    assert w.revision == 1 and not w.current().rollouts
    assert not w.adopt(StoredIntent(2, "e2", '{"schema": 7}'))  # malformed: kept
    assert w.revision == 1
