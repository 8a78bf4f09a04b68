"""The built resources in a REAL Envoy, with traffic.

Each golden case is loaded into Envoy as one static config (clusters STATIC, routes
inline; everything else exactly as built), every cluster pointed at its own tiny local
HTTP backend that answers which cluster it is. Then requests check routing by body field
``model``, by ``x-model`` (whatever the body), by ``x-model-version``, session
stickiness, the 404 JSON for an unknown model, the 400 JSON for a POST that names no
model, ``GET /v1/models``, large bodies, and that Envoy logged no deprecation.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.ir import (
    ClusterIR,
    EndpointIR,
    Health,
    ListenerIR,
    ModelRouteIR,
    Plan,
    RouteConfigIR,
    WeightedClusterIR,
)
from controlplane.proxy.runner import envoy_binary
from controlplane.xds.build import build_resources
from controlplane.xds.route import NOT_FOUND_BODY
from tests.golden.cases import case_names, case_plan, static_bootstrap
from tests.support import Procs, free_port, wait_until

pytestmark = pytest.mark.e2e


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stalls
    server: _Backend

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"cluster": self.server.cluster, "received": len(body)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cluster: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cluster = cluster

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def _backends(names: list[str]) -> Iterator[dict[str, _Backend]]:
    servers = {n: _Backend(n) for n in names}
    threads = [
        threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
        for s in servers.values()
    ]
    for t in threads:
        t.start()
    try:
        yield servers
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()


@dataclass
class _Edge:
    plan: Plan
    client: httpx.Client
    admin: int
    log: Path

    def cluster_for(self, **kw: Any) -> str:
        r = self.client.post("/v1/chat/completions", **kw)
        assert r.status_code == 200, r.text
        return str(r.json()["cluster"])


@pytest.fixture(scope="module", params=case_names())
def edge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Edge]:
    """One Envoy per golden case, shared by the tests of this module."""
    plan = case_plan(request.param)
    res = build_resources(plan)
    tmp_path = tmp_path_factory.mktemp(request.param)
    procs = Procs(tmp_path)
    with _backends([c.name for c in plan.clusters]) as backends, _stopping(procs):
        admin, port = free_port(), free_port()
        cfg = static_bootstrap(
            res,
            admin,
            backend=lambda name: ("127.0.0.1", backends[name].port),
            listen_port=port,
        )
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(cfg))
        p = procs.start(
            "envoy",
            [
                str(envoy_binary()),
                "-c",
                str(path),
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ],
        )
        url = f"http://127.0.0.1:{admin}/ready"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 10, what="envoy ready")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield _Edge(plan, client, admin, p.log)


def _envoy_argv(config: Path) -> list[str]:
    return [str(envoy_binary()), "-c", str(config), "--use-dynamic-base-id",
            "--concurrency", "1", "--log-level", "warning"]  # fmt: skip


def start_static_envoy(plan: Plan, procs: Procs, tmp_path: Path, admin: int) -> None:
    """``plan`` built and loaded as a static config (endpoints as planned); waits for ready."""
    assert plan.validate() == []
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(static_bootstrap(build_resources(plan), admin)))
    procs.start("envoy", _envoy_argv(path))
    ready = f"http://127.0.0.1:{admin}/ready"
    wait_until(lambda: httpx.get(ready, timeout=1).status_code == 200, 10, what="ready")


@contextlib.contextmanager
def _stopping(procs: Procs) -> Iterator[None]:
    try:
        yield
    finally:
        procs.stop_all()


def _models(e: _Edge) -> list[Any]:
    return [m for rc in e.plan.route_configs for m in rc.models]


def test_body_and_header_routing(edge: _Edge) -> None:
    for m in _models(edge):
        allowed = {w.cluster for w in m.clusters if w.weight > 0}
        assert edge.cluster_for(json={"model": m.model, "messages": []}) in allowed
        assert edge.cluster_for(json={}, headers={"x-model": m.model}) in allowed
        # content type with parameters still routes by body
        body = json.dumps({"model": m.model}).encode()
        ct = {"content-type": "application/json; charset=utf-8"}
        assert edge.cluster_for(content=body, headers=ct) in allowed
        for version, cluster in m.versions:
            pin = {"x-model-version": version}
            assert edge.cluster_for(json={"model": m.model}, headers=pin) == cluster
            assert edge.cluster_for(json={}, headers={"x-model": m.model, **pin}) == cluster


def test_answers_name_their_version_unless_turned_off(edge: _Edge) -> None:
    """``x-aixds-version`` names the version that answered and ``x-aixds-regions-differ``
    comes on a model whose regions differ; with ``version_headers`` off, no answer carries
    an ``x-aixds-`` header."""
    for rcfg in edge.plan.route_configs:
        for m in rcfg.models:
            if m.activator:
                continue
            weighted = {w.cluster: w.version for w in m.clusters}
            # (answer, the version it must name: the weighted cluster's, or the one pinned)
            answers: list[tuple[httpx.Response, dict[str, str]]] = [
                (edge.client.post("/v1/chat/completions", json={"model": m.model}), weighted)
                for _ in range(6)
            ]
            answers += [
                (
                    edge.client.post(
                        "/v1/chat/completions",
                        json={},
                        headers={"x-model": m.model, "x-model-version": v},
                    ),
                    {c: v},
                )
                for v, c in m.versions
            ]
            for r, version_of in answers:
                assert r.status_code == 200, r.text
                if not rcfg.version_headers:
                    assert not [k for k in r.headers if k.startswith("x-aixds-")], r.headers
                    continue
                cluster = r.json()["cluster"]
                want = version_of.get(cluster) or None
                assert r.headers.get("x-aixds-version") == want, (cluster, r.headers)
                differ = r.headers.get("x-aixds-regions-differ")
                assert differ == (m.regions_differ or None), r.headers


def test_header_wins_over_body(edge: _Edge) -> None:
    models = _models(edge)
    if len(models) < 2:
        pytest.skip("needs two models")
    a, b = models[0], models[1]
    got = edge.cluster_for(json={"model": b.model}, headers={"x-model": a.model})
    assert got in {w.cluster for w in a.clusters}


def test_unknown_model_is_openai_404(edge: _Edge) -> None:
    for kw in (
        {"json": {"model": "no-such-model"}},
        {"headers": {"x-model": "nope"}},
        {"content": b"not json", "headers": {"x-model": "nope"}},  # the header names one
        {"json": {"model": 7}},
    ):
        r = edge.client.post("/v1/chat/completions", **kw)  # type: ignore[arg-type]
        assert r.status_code == 404, kw
        assert r.headers["content-type"] == "application/json"
        assert r.json() == json.loads(NOT_FOUND_BODY)
    assert edge.client.get("/v1/models/no-such-model").status_code == 404  # only POSTs get 400


JSON = {"content-type": "application/json"}
TEXT = {"content-type": "text/plain"}


@pytest.mark.parametrize(
    ("kw", "code", "param"),
    [
        ({"content": b'{"model": "llama-3-8b",', "headers": JSON}, "invalid_json", None),
        ({"content": b"model=llama-3-8b", "headers": JSON}, "invalid_json", None),
        (
            {"content": b"{]", "headers": {"content-type": "application/json; charset=utf-8"}},
            "invalid_json",
            None,
        ),
        ({"json": {"messages": [{"role": "user", "content": "hi"}]}}, "missing_model", "model"),
        ({"json": {"model": None}}, "missing_model", "model"),
        ({"json": ["model"]}, "missing_model", "model"),
        ({"content": b"", "headers": JSON}, "missing_model", "model"),
        ({"content": b"hello", "headers": TEXT}, "unsupported_content_type", None),
        ({"data": {"model": "llama-3-8b"}}, "unsupported_content_type", None),  # a form
        ({}, "unsupported_content_type", None),  # no body, no content-type
    ],
    ids=[
        "truncated-json", "form-as-json", "bad-json-charset", "no-model", "model-null",
        "json-array", "empty-json", "text-plain", "form", "no-body",
    ],
)  # fmt: skip
def test_malformed_request_is_openai_400(
    edge: _Edge, kw: dict[str, Any], code: str, param: str | None
) -> None:
    r = edge.client.post("/v1/chat/completions", **kw)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    assert "model" in err["message"] and "x-model header" in err["message"]


def test_header_routes_any_body(edge: _Edge) -> None:
    """``x-model`` routes whatever the body is: multipart, text, broken JSON, JSON without
    ``model``."""
    m = _models(edge)[0]
    allowed = {w.cluster for w in m.clusters if w.weight > 0}
    h = {"x-model": m.model}
    files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
    assert edge.cluster_for(files=files, data={"model": "whisper"}, headers=h) in allowed
    assert edge.cluster_for(content=b"hello", headers={**h, **TEXT}) in allowed
    assert edge.cluster_for(content=b"{]", headers={**h, **JSON}) in allowed
    assert edge.cluster_for(json={"prompt": "hi"}, headers=h) in allowed


def test_models_list(edge: _Edge) -> None:
    r = edge.client.get("/v1/models")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    assert [d["id"] for d in body["data"]] == sorted(m.model for m in _models(edge))


def test_large_body_is_not_413(edge: _Edge) -> None:
    m = _models(edge)[0]
    prompt = "x" * (2 * 1024 * 1024)
    r = edge.client.post("/v1/completions", json={"model": m.model, "prompt": prompt})
    assert r.status_code == 200, r.text
    assert r.json()["received"] > 2 * 1024 * 1024


def test_session_keeps_its_version(edge: _Edge) -> None:
    sticky = [m for m in _models(edge) if m.session_header and len(m.clusters) > 1]
    if not sticky:
        pytest.skip("no sticky canary in this case")
    for m in sticky:
        seen: dict[str, set[str]] = {}
        for i in range(40):
            session = f"session-{i}"
            for _ in range(3):
                got = edge.cluster_for(json={"model": m.model}, headers={m.session_header: session})
                seen.setdefault(session, set()).add(got)
        assert all(len(v) == 1 for v in seen.values()), seen
        # 40 fixed sessions over a 90/10 split: both versions get some (deterministic hash);
        # with session affinity, through the versions' affinity clusters
        want = m.affinity_clusters or m.clusters
        assert {c for v in seen.values() for c in v} == {w.cluster for w in want}
        if m.affinity_clusters:  # sessionless requests follow load, as before
            got = {edge.cluster_for(json={"model": m.model}) for _ in range(40)}
            got |= {edge.cluster_for(json={"model": m.model, "user": ""}) for _ in range(40)}
            assert got == {w.cluster for w in m.clusters}
            # the body's user is a session key too (when no header is sent)
            by_user = {
                edge.cluster_for(json={"model": m.model, "user": f"session-{i}"}) for i in range(40)
            }
            assert by_user == {w.cluster for w in m.affinity_clusters}


def test_no_deprecation_warnings(edge: _Edge) -> None:
    edge.client.get("/v1/models")
    log = edge.log.read_text(errors="replace").lower()
    assert "deprecated" not in log, log[-3000:]


@pytest.mark.parametrize("case", ["two_regions", "canary_sticky"])
def test_envoy_loads_endpoints_as_planned(case: str, procs: Procs, tmp_path: Path) -> None:
    """Weight, priority, EDS health, locality and hostname per host, as Envoy's admin shows."""
    plan = case_plan(case)
    admin = free_port()
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(static_bootstrap(build_resources(plan), admin, listen_port=0)))
    procs.start("envoy", _envoy_argv(path))
    url = f"http://127.0.0.1:{admin}/clusters?format=json"
    wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 10, what="envoy admin")
    seen = {
        c["name"]: c.get("host_statuses", []) for c in httpx.get(url).json()["cluster_statuses"]
    }
    for c in plan.clusters:
        got = {_host_key(h): _host_view(h) for h in seen[c.name]}
        want = {
            (e.address, e.port): (
                e.weight,
                e.priority,
                e.health.value,
                e.region,
                e.zone,
                e.replica_id,
            )
            for e in c.endpoints
        }
        assert got == want


def _host_key(h: dict[str, Any]) -> tuple[str, int]:
    sa = h["address"]["socket_address"]
    return sa["address"], sa["port_value"]


def _host_view(h: dict[str, Any]) -> tuple[Any, ...]:
    loc = h["locality"]
    health = h["health_status"]["eds_health_status"]
    return h["weight"], h.get("priority", 0), health, loc["region"], loc["zone"], h["hostname"]


def test_inference_defaults_hold_with_traffic(procs: Procs, tmp_path: Path) -> None:
    """No panic mode (an UNHEALTHY-only cluster answers 503, it does not send traffic to
    the sick host) and retries that leave a dead priority 0 for a live priority 1."""
    with _backends(["live"]) as backends:
        live = backends["live"].port
        dead = free_port()  # nothing listens: connect-failure

        def ep(rid: str, port: int, health: Health, priority: int) -> EndpointIR:
            return EndpointIR(rid, "127.0.0.1", port, 10, health, f"r{priority}", "z", priority)

        sick = ClusterIR("sick@v1", "sick", "v1", (ep("s", live, Health.UNHEALTHY, 0),))
        failover = ClusterIR(
            "failover@v1",
            "failover",
            "v1",
            (ep("p0", dead, Health.HEALTHY, 0), ep("p1", live, Health.HEALTHY, 1)),
        )
        routes = RouteConfigIR(
            "routes",
            tuple(
                ModelRouteIR(c.model, (WeightedClusterIR(c.name, 100),)) for c in (sick, failover)
            ),
        )
        port, admin = free_port(), free_port()
        plan = Plan((sick, failover), (routes,), (ListenerIR("l", "127.0.0.1", port, "routes"),))
        start_static_envoy(plan, procs, tmp_path, admin)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            r = client.post("/v1/completions", json={"model": "sick"})
            assert r.status_code == 503
            assert "no healthy upstream" in r.text
            r = client.post("/v1/completions", json={"model": "failover"})
            assert r.status_code == 200, r.text
            assert int(r.headers["x-envoy-attempt-count"]) > 1
