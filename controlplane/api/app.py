"""The FastAPI application of ``aixds serve --api``.

Bearer tokens with scopes guard it (``auth``): reads (every ``GET /v1/...`` and
``/metrics``) are open unless the server requires a read token; drains, desired models and
GPU-fault clears need scope operate; rollouts, placement and affinity need scope admin.
``/healthz`` (and the OpenAPI docs) stay open for load balancers and probes. Every change
is in the audit log (``GET /v1/audit``). The test-only switch exists only when the server
runs with ``--test-hooks``. Every error is a JSON body with an ``error`` code
(``errors``); 5xx only for "retry later" (503) and bugs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from controlplane.api import (
    affinity,
    audit,
    desired,
    drains,
    errors,
    faults,
    placement,
    rollouts,
    ui,
)
from controlplane.api.context import ApiContext, TestHooks
from controlplane.fleet.codec import encode_record

__all__ = ["ApiContext", "TestHooks", "create_app"]


_READ_AUTH_ERRORS = errors.error_responses(
    (401, "missing or unknown API token (this server requires a token to read)"),
    (403, "the token lacks the scope this needs"),
)


class InvalidXds(BaseModel):
    enabled: bool


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="aixds",
        description="Envoy xDS control plane for AI inference fleets",
        version="0.1.0",
    )
    errors.install(app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "redis_connected": ctx.watcher.connected,
            "fleet_synced": ctx.watcher.synced_once,
            "replicas": len(ctx.watcher.view),
            "node_groups": len(ctx.reconciler.groups),
            "intent_synced": ctx.intents.synced if ctx.intents is not None else False,
            "intent_revision": ctx.intents.revision if ctx.intents is not None else 0,
            "published_revision": ctx.reconciler.applied_revision,
            "writes_enabled": ctx.access.writes_enabled,
            "reads_need_token": ctx.access.require_read,
        }

    reads = APIRouter(
        dependencies=[Depends(ctx.access.read)],
        responses=_READ_AUTH_ERRORS if ctx.access.require_read else None,
    )

    @reads.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    @reads.get("/v1/fleet")
    def fleet() -> dict[str, Any]:
        now = time.time()
        return {
            "replicas": [
                {
                    **json.loads(encode_record(o.record)),
                    "expires_in_s": round(o.expires_at - now, 3),
                }
                for _, o in sorted(ctx.watcher.view.items())
            ]
        }

    @reads.get("/v1/groups")
    def groups() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, st in sorted(ctx.reconciler.groups.items()):
            out[name] = {
                "node": {"role": st.node.role, "region": st.node.region, "zone": st.node.zone},
                "versions": dict(st.snapshot.versions),
                "published_at": st.at,
                "clusters": {
                    c.name: [
                        {
                            "replica": e.replica_id,
                            "address": f"{e.address}:{e.port}",
                            "weight": e.weight,
                            "health": e.health.value,
                            "priority": e.priority,
                            "region": e.region,
                            "zone": e.zone,
                        }
                        for e in c.endpoints
                    ]
                    for c in st.plan.clusters
                },
                "routes": {
                    m.model: {w.cluster: w.weight for w in m.clusters}
                    for rc in st.plan.route_configs
                    for m in rc.models
                },
                "regions_differ": {
                    m.model: m.regions_differ
                    for rc in st.plan.route_configs
                    for m in rc.models
                    if m.regions_differ
                },
            }
        return {"groups": out}

    @reads.get("/v1/xds")
    def xds() -> dict[str, Any]:
        return ctx.xds_status()

    for module in (rollouts, faults, drains, affinity, placement, desired, audit, ui):
        reads.include_router(module.router(ctx))
    app.include_router(ui.pages())
    app.include_router(reads)

    if ctx.test_hooks is not None:
        hooks = ctx.test_hooks

        @app.post("/v1/test/invalid-xds")
        def invalid_xds(body: InvalidXds) -> dict[str, bool]:
            if hooks is None:  # pragma: no cover - route exists only with hooks
                raise HTTPException(404)
            hooks.invalid_xds = body.enabled
            ctx.reconciler.trigger()
            return {"enabled": hooks.invalid_xds}

    return app
