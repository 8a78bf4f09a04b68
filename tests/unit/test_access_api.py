"""Scoped tokens on the real app (memory stores): 401 / 403 / 200 per scope and endpoint,
reads open or closed, and what the audit log records of each change."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.api.tokens import load_tokens
from tests.rollout_app import App, MemoryRedis, build

ADMIN = "alice-admin-token-0123456789"
OPERATE = "ci-operate-token-0123456789"
READ = "grafana-read-token-0123456789"
TOKENS = f"""
- {{name: alice, token: {ADMIN}, scopes: [admin]}}
- {{name: ci, token: {OPERATE}, scopes: [operate]}}
- {{name: grafana, token: {READ}, scopes: [read]}}
"""


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def app(require_read: bool = False, legacy: str = "") -> tuple[TestClient, App]:
    a = build(
        legacy,
        redis=MemoryRedis(),
        tokens=load_tokens(env_text=TOKENS),
        require_read=require_read,
    )
    return TestClient(a.app, raise_server_exceptions=False), a


# (method, path, body, scope it needs); each succeeds (200) with a token that has the scope
WRITES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/drains/n1", None, "operate"),
    ("DELETE", "/v1/drains/n1", None, "operate"),
    ("PUT", "/v1/nodes/n1/models/sql-lora", {"server": "a"}, "operate"),
    ("DELETE", "/v1/nodes/n1/models/sql-lora", None, "operate"),
    ("POST", "/v1/nodes/n1/gpu-faults/clear", None, "operate"),
    ("POST", "/v1/rollouts/llama", {"to": "v1"}, "admin"),
    ("PUT", "/v1/placement/llama", {"min_resident": {"": 1}}, "admin"),
    ("DELETE", "/v1/placement/llama", None, "admin"),
    ("PUT", "/v1/affinity/llama", {"enabled": False}, "admin"),
    ("DELETE", "/v1/affinity/llama", None, "admin"),
]
RANK = {"read": 1, "operate": 2, "admin": 3}


@pytest.mark.parametrize(("method", "path", "body", "needs"), WRITES)
def test_each_write_needs_its_scope(method: str, path: str, body: Any, needs: str) -> None:
    c, a = app()
    r = c.request(method, path, json=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert r.headers["www-authenticate"] == "Bearer"
    r = c.request(method, path, json=body, headers=bearer("not-a-token-of-this-server"))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    for name, token, has in (("grafana", READ, "read"), ("ci", OPERATE, "operate")):
        if RANK[has] >= RANK[needs]:
            continue
        r = c.request(method, path, json=body, headers=bearer(token))
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "insufficient_scope"
        assert r.json()["detail"] == (
            f"token '{name}' has scope {has}; {method} {path} needs scope {needs}"
        )
        assert r.headers["www-authenticate"] == (
            f'Bearer error="insufficient_scope", scope="{needs}"'
        )
    assert a.audit.entries == []  # nothing refused was recorded (or written)
    for token, has in ((OPERATE, "operate"), (ADMIN, "admin")):
        if RANK[has] >= RANK[needs]:
            r = c.request(method, path, json=body, headers=bearer(token))
            assert r.status_code == 200, (token, r.text)
    metrics = c.get("/metrics").text
    assert 'aixds_api_denied_total{reason="unauthorized"} 2.0' in metrics


def test_reads_are_open_by_default_whatever_token_is_sent() -> None:
    c, _ = app()
    for h in ({}, bearer("junk"), bearer(READ)):
        for path in ("/v1/rollouts", "/v1/drains", "/v1/audit", "/metrics", "/v1/fleet"):
            assert c.get(path, headers=h).status_code == 200, path
    health = c.get("/healthz").json()
    assert health["writes_enabled"] is True and health["reads_need_token"] is False


def test_require_read_token_closes_every_read_but_healthz() -> None:
    c, _ = app(require_read=True)
    paths = ["/v1/rollouts", "/v1/models", "/v1/drains", "/v1/audit", "/v1/groups", "/metrics"]
    paths += ["/v1/fleet", "/v1/xds", "/v1/intent", "/v1/placement", "/v1/affinity"]
    for path in paths:
        r = c.get(path)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert c.get(path, headers=bearer("junk")).status_code == 401, path
        for token in (READ, OPERATE, ADMIN):
            assert c.get(path, headers=bearer(token)).status_code == 200, (path, token)
    assert c.get("/healthz").json()["reads_need_token"] is True
    # a write still needs its own scope on top of read
    r = c.post("/v1/drains/n1", headers=bearer(READ))
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    assert c.post("/v1/drains/n1", headers=bearer(OPERATE)).status_code == 200


def test_dashboard_page_is_open_and_its_data_takes_a_read_token_also_as_a_query() -> None:
    """The page holds no data; its snapshot needs a read token where reads need one, also
    as ``?access_token=`` (RFC 6750: a browser's EventSource sends no headers), and a
    token in the query never authorises a write."""
    c, _ = app(require_read=True)
    assert c.get("/ui").status_code == 200
    assert c.get("/v1/ui/snapshot").status_code == 401
    assert c.get("/v1/ui/snapshot", headers=bearer(READ)).status_code == 200
    assert c.get(f"/v1/ui/snapshot?access_token={READ}").status_code == 200
    assert c.get("/v1/ui/snapshot?access_token=nope-not-a-token").status_code == 401
    assert c.get(f"/v1/drains?access_token={READ}").status_code == 200
    r = c.post(f"/v1/drains/n1?access_token={ADMIN}")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text


def test_no_token_that_may_write_keeps_the_api_read_only() -> None:
    a = build("", tokens=load_tokens(env_text=f"- {{name: grafana, token: {READ}, scopes: read}}"))
    c = TestClient(a.app, raise_server_exceptions=False)
    r = c.post("/v1/drains/n1", headers=bearer(READ))
    assert r.status_code == 403 and r.json()["error"] == "writes_disabled"
    assert "--tokens-file" in r.json()["detail"] and "--api-token" in r.json()["detail"]
    assert c.get("/healthz").json()["writes_enabled"] is False


def test_the_legacy_token_is_admin_named_api_token() -> None:
    c, a = app(legacy="tok")
    assert c.post("/v1/rollouts/llama", json={"to": "v1"}, headers=bearer("tok")).status_code == 200
    assert a.audit.entries[-1].who == "api-token"


def test_every_change_is_in_the_audit_log_with_who_and_what() -> None:
    c, _ = app()
    h = {**bearer(OPERATE), "x-request-id": "req-42"}
    r = c.post("/v1/drains/n5", headers=h)
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    calls: list[tuple[str, str, Any, str]] = [
        ("POST", "/v1/drains/n5", None, OPERATE),  # already drained: nothing changes
        ("PUT", "/v1/nodes/n1/models/sql-lora", {"server": "a"}, OPERATE),
        ("PUT", "/v1/nodes/n1/models/sql-lora", {"server": "a", "state": "unloaded"}, OPERATE),
        ("DELETE", "/v1/nodes/n1/models/sql-lora", None, OPERATE),
        ("DELETE", "/v1/nodes/n1/models/sql-lora", None, OPERATE),  # gone already
        ("POST", "/v1/nodes/n1/gpu-faults/clear", None, OPERATE),
        ("POST", "/v1/rollouts/llama", {"to": "v2", "canary_percent": 10}, ADMIN),
        ("POST", "/v1/rollouts/llama/percent", {"percent": 30}, ADMIN),
        ("PUT", "/v1/placement/qwen", {"min_resident": {"": 2}}, ADMIN),
        ("PUT", "/v1/affinity/llama", {"enabled": False}, ADMIN),
    ]
    for method, path, body, token in calls:
        r = c.request(method, path, json=body, headers=bearer(token))
        assert r.status_code == 200, (path, r.text)

    doc = c.get("/v1/audit").json()
    got = [(e["who"], e["action"], e["target"], e["old"], e["new"]) for e in doc["entries"]]
    lora = {"server": "a"}  # as stored: loaded is the default
    assert got[:5] == [
        ("ci", "drain", "n5", {"drained": []}, {"drained": ["n5"]}),
        ("ci", "models.load", "n1/models/sql-lora", None, lora),
        ("ci", "models.unload", "n1/models/sql-lora", lora, {**lora, "state": "unloaded"}),
        ("ci", "models.forget", "n1/models/sql-lora", {**lora, "state": "unloaded"}, None),
        ("ci", "gpu-faults.clear", "n1", {"cleared_before": None}, got[4][4]),
    ]
    assert got[4][4]["faulty_replicas"] == []
    assert [(w, act, t) for w, act, t, _, _ in got[5:]] == [
        ("alice", "start", "llama"),
        ("alice", "set", "llama"),
        ("alice", "placement", "qwen"),
        ("alice", "affinity", "llama"),
    ]
    # only what changed, before and after
    assert got[6][3:] == (
        {"rollouts": {"llama": {"canary_percent": 10.0}}},
        {"rollouts": {"llama": {"canary_percent": 30.0}}},
    )
    assert got[8][3:] == ({"affinity": {"llama": None}}, {"affinity": {"llama": False}})
    first = doc["entries"][0]
    assert first["request_id"] == "req-42" and first["revision"] == 1
    assert doc["entries"][1]["revision"] == 0  # not an intent change
    assert doc["last_id"] == doc["entries"][-1]["id"]


def test_audit_paging_and_bad_queries() -> None:
    c, _ = app()
    for target in ("n1", "n2", "n3"):
        c.post(f"/v1/drains/{target}", headers=bearer(OPERATE))
    latest = c.get("/v1/audit", params={"limit": 2}).json()
    assert [e["target"] for e in latest["entries"]] == ["n2", "n3"]
    first = c.get("/v1/audit", params={"limit": 1}).json()
    assert [e["target"] for e in first["entries"]] == ["n3"]
    everything = c.get("/v1/audit").json()["entries"]
    after = c.get("/v1/audit", params={"since": everything[0]["id"]}).json()
    assert [e["target"] for e in after["entries"]] == ["n2", "n3"]
    nothing = c.get("/v1/audit", params={"since": after["last_id"]}).json()
    assert nothing == {"entries": [], "last_id": after["last_id"]}
    for bad in ({"limit": 0}, {"limit": 10_001}, {"since": "yesterday"}, {"since": "1-2-3"}):
        r = c.get("/v1/audit", params=bad)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad


def test_an_audit_write_that_fails_loses_no_change_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c, a = app()
    a.audit.fail = ConnectionError("audit Redis down")
    r = c.post("/v1/drains/n1", headers=bearer(OPERATE))
    assert r.status_code == 200 and r.json()["drained"][0]["target"] == "n1"
    assert a.store.stored.revision == 1  # the drain stands
    r = c.put("/v1/nodes/n1/models/sql-lora", json={"server": "a"}, headers=bearer(OPERATE))
    assert r.status_code == 200
    assert 'aixds_audit_writes_total{result="failed"} 2.0' in c.get("/metrics").text
    assert "audit log not written (the change stands)" in caplog.text
    assert "'who': 'ci'" in caplog.text and "'action': 'drain'" in caplog.text
