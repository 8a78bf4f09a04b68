"""The dashboard's HTTP surface on the in-process API: page, assets, snapshot, SSE."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from controlplane.api.ui_timeline import replicas
from controlplane.demo.main import dashboard_lines
from tests.rollout_app import build


def test_page_and_assets_are_served_from_the_package() -> None:
    c = TestClient(build().app)
    page = c.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/ui/app.js">' in page.text
    assert "http" not in page.text.replace('content="width', "")  # nothing from elsewhere
    js = c.get("/ui/app.js")
    assert js.status_code == 200 and "EventSource" in js.text
    assert c.get("/ui/style.css").headers["content-type"].startswith("text/css")
    missing = c.get("/ui/../app.py")
    assert missing.status_code == 404
    r = c.get("/ui/secrets.txt")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_snapshot_shows_the_fleet_and_the_rollout() -> None:
    app = build()
    c = TestClient(app.app)
    snap = c.get("/v1/ui/snapshot").json()
    ids = set(replicas(snap))
    assert ids == {"n1/a", "n2/a", "n3/a", "n4/a", "n5/a"}
    assert snap["writes_enabled"] is True
    assert {m["model"] for m in snap["models"]} == {"llama", "qwen"}
    r = c.post(
        "/v1/rollouts/llama",
        json={"to": "v2", "canary_percent": 10},
        headers={"authorization": "Bearer tok"},
    )
    assert r.status_code == 200, r.text
    time.sleep(1.05)  # the feed builds at most once a second
    snap = c.get("/v1/ui/snapshot").json()
    llama = next(m for m in snap["models"] if m["model"] == "llama")
    assert llama["rollout"]["canary"] == "v2"
    assert [e["kind"] for e in snap["events"]] == ["rollout"]


def test_event_stream_sends_snapshots() -> None:
    c = TestClient(build().app)
    with c.stream("GET", "/v1/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                data.append(json.loads(line[6:]))
            if len(data) == 2:
                break
    assert all("regions" in d and "events" in d for d in data)
    assert data[1]["at"] >= data[0]["at"]


def test_demo_names_a_dashboard_per_region() -> None:
    assert dashboard_lines({"": "http://127.0.0.1:9000"}) == [
        "web dashboard: http://127.0.0.1:9000/ui   (write token: demo)"
    ]
    two = dashboard_lines({"us-east": "http://h:1", "eu-west": "http://h:2"})
    assert two == [
        "web dashboard (us-east): http://h:1/ui   (write token: demo)",
        "web dashboard (eu-west): http://h:2/ui   (write token: demo)",
    ]
