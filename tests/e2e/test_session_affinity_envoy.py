"""Session identity reaches Envoy's hashing, in a REAL Envoy with a MAGLEV cluster.

The session key is the ``x-session-id`` header or, without it, the OpenAI body field
``user`` (json_to_metadata -> set_filter_state ``envoy.hashable_string`` -> the route's
``filter_state`` hash policy). One key keeps one replica; many keys spread; a request
without a key (no ``user``, or an empty one) is not hashed at all, so such requests are
not piled onto one replica as one giant session.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.ir import (
    ClusterIR,
    EndpointIR,
    Health,
    LbPolicy,
    ListenerIR,
    ModelRouteIR,
    Plan,
    RouteConfigIR,
    WeightedClusterIR,
)
from tests.e2e.test_builders_envoy import _backends, start_static_envoy
from tests.support import Procs, free_port

pytestmark = pytest.mark.e2e

REPLICAS = [f"replica-{i}" for i in range(4)]
MODEL = "llama-3-8b"
N = 50


@pytest.fixture
def client(procs: Procs, tmp_path: Path) -> Any:
    with _backends(REPLICAS) as backends:
        endpoints = tuple(
            EndpointIR(name, "127.0.0.1", backends[name].port, 10, Health.HEALTHY, "r", "z", 0)
            for name in REPLICAS
        )
        cluster = ClusterIR(f"{MODEL}@v1", MODEL, "v1", endpoints, lb_policy=LbPolicy.MAGLEV)
        routes = RouteConfigIR(
            "routes",
            (ModelRouteIR(MODEL, (WeightedClusterIR(cluster.name, 100),), "x-session-id"),),
        )
        port, admin = free_port(), free_port()
        plan = Plan((cluster,), (routes,), (ListenerIR("l", "127.0.0.1", port, "routes"),))
        start_static_envoy(plan, procs, tmp_path, admin)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            yield c


def _replicas(
    client: httpx.Client, bodies_headers: list[tuple[dict[str, Any], dict[str, str]]]
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for body, headers in bodies_headers:
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        seen[r.json()["cluster"]] += 1
    return seen


def test_session_key_reaches_the_hash(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": []}
    # one header: one replica (also when each request carries a different body user)
    one = _replicas(client, [(body | {"user": f"u{i}"}, {"x-session-id": "s-1"}) for i in range(N)])
    assert len(one) == 1, one
    # one body user, no header: one replica
    one = _replicas(client, [(body | {"user": "alice"}, {}) for _ in range(N)])
    assert len(one) == 1, one
    # many keys spread, by header and by body user
    many = _replicas(client, [(body, {"x-session-id": f"s-{i}"}) for i in range(N)])
    assert len(many) > 1, many
    many = _replicas(client, [(body | {"user": f"user-{i}"}, {}) for i in range(N)])
    assert len(many) > 1, many


@pytest.mark.parametrize(
    "extra", [{}, {"user": ""}, {"user": None}], ids=["no-user", "empty-user", "null-user"]
)
def test_no_key_is_not_one_giant_session(client: httpx.Client, extra: dict[str, Any]) -> None:
    """Without a key the request still succeeds and is not hashed: MAGLEV picks a random
    host, so 50 such requests land on more than one replica."""
    seen = _replicas(client, [({"model": MODEL} | extra, {}) for _ in range(N)])
    assert len(seen) > 1, seen
    r = client.post("/v1/chat/completions", json={}, headers={"x-model": MODEL})
    assert r.status_code == 200
