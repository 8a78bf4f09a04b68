"""Helpers for the model-server adapter tests: fixtures, a routed mock server, record checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from controlplane.agent.servers.adapter import Probe
from controlplane.fleet.codec import decode_record, encode_record
from controlplane.fleet.model import ReplicaRecord, ServerKind

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Route = tuple[int, str | bytes] | Callable[[httpx.Request], httpx.Response]


def fixture(kind: str, name: str) -> str:
    return (FIXTURES / kind / name).read_text()


def fixture_json(kind: str, name: str) -> Any:
    return json.loads(fixture(kind, name))


def mock_client(routes: Mapping[str, Route]) -> httpx.AsyncClient:
    """A client whose server answers ``"METHOD /path"`` from ``routes`` (404 otherwise)."""

    def handle(req: httpx.Request) -> httpx.Response:
        route = routes.get(f"{req.method} {req.url.path}")
        if route is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        if callable(route):
            return route(req)
        status, body = route
        return httpx.Response(status, content=body.encode() if isinstance(body, str) else body)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def refusing_client() -> httpx.AsyncClient:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    return httpx.AsyncClient(transport=httpx.MockTransport(refuse))


def publishable(probe: Probe, kind: ServerKind) -> ReplicaRecord:
    """The record a probe becomes, through the codec: it must decode to the same thing."""
    rec = ReplicaRecord(
        replica_id=f"n/{kind.value}-1",
        node="n",
        region="r",
        zone="z",
        address="127.0.0.1",
        port=1,
        server_kind=kind,
        models=probe.models,
        load=probe.load,
        timestamp=1.0,
    )
    back = decode_record(encode_record(rec))
    assert back == rec
    return back
