"""The web dashboard: ``GET /ui`` (static page), ``GET /v1/ui/snapshot`` and the live feed
``GET /v1/events`` (server-sent events, one ``snapshot`` message about every second).

The page is three files shipped in the package (``ui/index.html``, ``app.js``,
``style.css``): no build step, nothing fetched from the internet. It reads only; its
promote / rollback buttons call the ordinary write endpoints with the bearer token the
user typed, and show the API's refusal when there is none or it is wrong.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import ApiError
from controlplane.api.ui_snapshot import GroupPlan, UiInputs, snapshot
from controlplane.fleet import schema
from controlplane.runtime.regions import RegionalFleet

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
STREAM_MAX_S = 300.0
"""An event stream ends after this long; the browser's EventSource reconnects by itself."""
HEARTBEAT_S = 15.0


def _asset(name: str) -> bytes:
    return resources.files("controlplane.api").joinpath("ui", name).read_bytes()


async def inputs(ctx: ApiContext) -> UiInputs:
    """What the snapshot is made of, read from the server's memory (and one Redis GET for
    the last placement decision)."""
    now = time.time()
    intent = ctx.require_intents().current()
    regions: dict[str, str] = {}
    local = ""
    if isinstance(ctx.watcher, RegionalFleet):
        regions = {r: ctx.watcher.state(r) for r in sorted(ctx.watcher.watchers)}
        local = ctx.watcher.local
    placement = None
    if ctx.redis is not None:
        try:
            raw = await redis_op("read the placement decision", ctx.redis.get(schema.PLACEMENT_KEY))
            placement = json.loads(raw) if raw else None
        except ApiError:
            placement = None  # Redis down: the dashboard says so elsewhere
    return UiInputs(
        now=now,
        view=dict(ctx.watcher.view),
        intent=intent,
        groups={
            name: GroupPlan(st.node.role, st.node.region, st.node.zone, st.plan, st.at)
            for name, st in ctx.reconciler.groups.items()
        },
        xds=ctx.xds_status(),
        regions=regions,
        local_region=local,
        loads=ctx.loads.view() if ctx.loads is not None else (),
        verdicts=dict(ctx.guard.verdicts) if ctx.guard is not None else {},
        placement=placement,
        redis_connected=ctx.watcher.connected,
        synced=ctx.watcher.synced_once and (ctx.intents is not None and ctx.intents.synced),
        writes_enabled=ctx.access.writes_enabled,
    )


async def build(ctx: ApiContext) -> dict[str, Any]:
    # The inputs are copies or immutable, so the snapshot can be made off the event loop
    # (about 0.1 s for 1,000 replicas) while xDS streams go on.
    return await asyncio.to_thread(snapshot, await inputs(ctx))


async def run_feed(ctx: ApiContext) -> None:
    """The feed loop of ``aixds serve`` (spawned by the runtime)."""
    await ctx.ui.run(lambda: build(ctx))


def pages() -> APIRouter:
    """The page and its files: open to all (they hold no data; the data comes from
    ``router``'s endpoints, which need a read token where the server requires one)."""
    api = APIRouter(tags=["dashboard"])

    @api.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"), headers={"cache-control": "no-cache"})

    @api.get("/ui/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in STATIC:
            raise ApiError(404, "not_found", f"no dashboard file {name!r}")
        return Response(
            _asset(name), media_type=STATIC[name], headers={"cache-control": "no-cache"}
        )

    return api


def router(ctx: ApiContext) -> APIRouter:
    """The dashboard's data: the snapshot and the event stream (read scope)."""
    api = APIRouter(tags=["dashboard"])
    feed = ctx.ui

    async def fresh() -> None:
        await feed.refresh_if_older(lambda: build(ctx), feed.interval_s)

    @api.get("/v1/ui/snapshot")
    async def ui_snapshot() -> dict[str, Any]:
        """What the dashboard shows now: fleet tree, Envoy groups, models, drains, NACKs
        and the newest timeline events (the same document ``/v1/events`` streams)."""
        await fresh()
        return feed.message()

    @api.get("/v1/events", include_in_schema=False)  # endless: no schema fuzzing
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: a ``snapshot`` message (as ``/v1/ui/snapshot``) about every
        second while anything is connected."""
        await fresh()

        async def stream() -> AsyncIterator[str]:
            started = time.monotonic()
            seq = feed.seq
            yield "retry: 1000\n\n"
            yield f"event: snapshot\ndata: {json.dumps(feed.message())}\n\n"
            while not feed.closed and time.monotonic() - started < STREAM_MAX_S:
                if await request.is_disconnected():
                    return
                if not await feed.wait_newer(seq, min(feed.interval_s * 1.5, HEARTBEAT_S)):
                    # no loop running (an app in a test) or a slow build: build on demand
                    await fresh()
                    if feed.seq == seq:
                        yield ": ping\n\n"
                        continue
                seq = feed.seq
                yield f"event: snapshot\ndata: {json.dumps(feed.message())}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return api
