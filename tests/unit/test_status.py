"""``aixds status`` against the real config API (in-process, memory stores) over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from controlplane.decide import EnvoyNode
from controlplane.fleet.model import ModelFailure
from controlplane.status import print_status
from tests.fleetgen import replica
from tests.rollout_app import FAR, build, default_fleet
from tests.unit.httpstub import StubRequest, StubResponse, StubServer
from tests.unit.test_serving_version import fail_open_app

AUTH = {"authorization": "Bearer tok"}


def forward(c: TestClient) -> Callable[[StubRequest], StubResponse]:
    """A stub handler that answers every GET from the in-process app."""

    def handler(req: StubRequest) -> StubResponse:
        r = c.get(req.path)
        return StubResponse(r.status_code, r.content, {"Content-Type": r.headers["content-type"]})

    return handler


def run_status(handler: Callable[[StubRequest], StubResponse]) -> None:
    with StubServer(handler) as stub:
        assert print_status(stub.url) == 0


def test_status_lists_every_models_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    r = c.post("/v1/rollouts/llama", json={"to": "v2", "canary_percent": 10}, headers=AUTH)
    assert r.status_code == 200, r.text
    run_status(forward(c))
    out = capsys.readouterr().out
    section = out[out.index("\nrollouts") :].strip().splitlines()
    assert section[0] == "rollouts (intent revision 1)"
    assert section[1] == "  llama: traffic v1 90%, v2 10%"
    assert section[2].startswith("    stable v1, canary v2 at 10% since ")
    assert section[3:] == ["  qwen: traffic q1 100%", "    stable q1"]


def test_status_shows_fail_open(capsys: pytest.CaptureFixture[str]) -> None:
    c, _ = fail_open_app()
    run_status(forward(c))
    out = capsys.readouterr().out
    section = out[out.index("\nrollouts") :].strip().splitlines()
    assert section[1:4] == [
        "  llama: traffic v2 100%",
        "    stable v1",
        "    FAIL-OPEN: stable v1 has no serving replica; traffic goes to v2 until it serves again",
    ]


def test_status_says_none_without_models(capsys: pytest.CaptureFixture[str]) -> None:
    c = TestClient(build(fleet={}).app, raise_server_exceptions=False)
    run_status(forward(c))
    assert capsys.readouterr().out.rstrip().endswith("\nrollouts: none")


def test_a_server_without_rollouts_still_shows_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    inner = forward(c)

    def handler(req: StubRequest) -> StubResponse:
        if req.path == "/v1/rollouts":
            return StubResponse(503, {"error": "no_intent", "detail": "not tracked"})
        return inner(req)

    run_status(handler)
    out = capsys.readouterr().out
    assert out.startswith("redis connected: True  replicas: 5")
    assert out.rstrip().endswith("\nrollouts: unavailable (503 no_intent)")


def test_status_shows_failed_loads_from_the_records(capsys: pytest.CaptureFixture[str]) -> None:
    fleet = default_fleet()
    o = fleet["n4/a"]
    failure = ModelFailure("llama", "v3", "load", "HTTP 500: out of memory", 3)
    fleet["n4/a"] = replace(o, record=replace(o.record, failures=(failure,)))
    c = TestClient(build(fleet=fleet).app, raise_server_exceptions=False)
    run_status(forward(c))
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        "model load failures: 1\n"
        "  n4/a: load llama@v3 failed 3x (retrying): HTTP 500: out of memory"
    )


def test_status_lists_drains(capsys: pytest.CaptureFixture[str]) -> None:
    c = TestClient(build().app, raise_server_exceptions=False)
    assert c.post("/v1/drains/n2", headers=AUTH).status_code == 200
    run_status(forward(c))
    out = capsys.readouterr().out
    assert "\ndrained (intent revision 1):\n  node n2: n2/a\n" in out


def test_status_shows_a_model_whose_regions_differ(capsys: pytest.CaptureFixture[str]) -> None:
    reps = default_fleet()
    eu = replica("eu1/a", region="eu", zone="eu-a", port=8006, expires_at=FAR)
    app = build(fleet={**reps, "eu1/a": eu})
    app.reconciler.add_group("edge/us", EnvoyNode(role="edge", region="us", zone="us-a"))
    app.reconciler.reconcile_once()
    c = TestClient(app.app, raise_server_exceptions=False)
    groups = c.get("/v1/groups").json()["groups"]
    assert groups["edge/us"]["regions_differ"] == {
        "llama": "eu=v1; us=v1,v2",
        "qwen": "eu=-; us=q1",
    }
    run_status(forward(c))
    lines = capsys.readouterr().out.splitlines()
    at = lines.index(next(ln for ln in lines if ln.startswith("  route llama:")))
    assert lines[at + 1] == "    regions differ: eu=v1; us=v1,v2"
