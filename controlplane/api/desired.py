"""Desired models of a node: ``GET /v1/nodes/{node}/models``, ``PUT`` / ``DELETE
/v1/nodes/{node}/models/{model}``.

The API writes the node's desired-models hash (``aixds:v1:desired:<node>``, format in
``fleet.desired``); the node's agent reads it every second and loads or unloads (see the
README). Each change is in the audit log (``models.load``, ``models.unload``,
``models.forget`` on target ``<node>/models/<model>``, with the entry before and after).
The answers add what the fleet view shows of each model on the node: where it is
loaded and in which state, and failed loads the agent reports.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import ApiError, error_responses
from controlplane.fleet import schema
from controlplane.fleet.audit import Actor
from controlplane.fleet.desired import (
    MAX_DESIRED,
    Desired,
    DesiredError,
    desired_json,
    parse_desired,
)
from controlplane.fleet.model import ReplicaRecord

_ERRORS = error_responses(
    (400, "the body could not be parsed"),
    (401, "missing or unknown API token"),
    (403, "the token lacks scope operate, or no token may write (read-only API)"),
    (404, "no replica of that node, or no such server on it, is known"),
    (409, f"the node already has {MAX_DESIRED} desired models"),
    (422, "invalid body"),
    (503, "Redis unreachable"),
)


class DesiredBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"server": "vllm-8000", "path": "/adapters/sql-v2"}]},
    )

    server: str = Field(default="", max_length=100, description="replica name on the node")
    state: Literal["loaded", "unloaded"] = "loaded"
    version: str = Field(default="", max_length=128, description="version to publish")
    path: str = Field(default="", max_length=4096, description="vLLM: the LoRA adapter path")
    keep_alive: str = Field(default="-1", max_length=32, description="Ollama: keep_alive")


class Observed(BaseModel):
    replica: str
    version: str
    state: str


class Failure(BaseModel):
    replica: str
    op: str
    error: str
    failures: int
    permanent: bool


class DesiredView(BaseModel):
    model: str
    server: str
    state: str
    version: str
    path: str
    keep_alive: str
    error: str = ""
    """Why the agent ignores this entry (it does not parse); empty when it is valid."""
    observed: list[Observed]
    """Where the node has this model now, and in which state."""
    failures: list[Failure]
    """Failed loads or unloads of it the node's agents report."""


class NodeModels(BaseModel):
    node: str
    models: list[DesiredView]


class Forgotten(BaseModel):
    node: str
    model: str
    removed: bool
    """False: the node had no entry for the model."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["desired models"])
    writes = APIRouter(
        tags=["desired models"], dependencies=[Depends(ctx.access.operate)], responses=_ERRORS
    )

    def view(d: Desired, recs: list[ReplicaRecord], error: str = "") -> DesiredView:
        return DesiredView(
            model=d.model,
            server=d.server,
            state="loaded" if d.loaded else "unloaded",
            version=d.version,
            path=d.path,
            keep_alive=d.keep_alive,
            error=error,
            observed=[
                Observed(replica=r.replica_id, version=m.version, state=m.state.value)
                for r in recs
                for m in r.models
                if m.name == d.model
            ],
            failures=[
                Failure(
                    replica=r.replica_id,
                    op=f.op,
                    error=f.error,
                    failures=f.failures,
                    permanent=f.permanent,
                )
                for r in recs
                for f in r.failures
                if f.name == d.model
            ],
        )

    @api.get(
        "/v1/nodes/{node}/models",
        response_model=NodeModels,
        responses={s: _ERRORS[s] for s in (404, 503)},
    )
    async def list_desired(node: str) -> NodeModels:
        """The node's desired models, each with what the node shows of it now."""
        recs = ctx.node_records(node)
        raw = await redis_op("read", ctx.node_redis(node).hgetall(schema.desired_key(node)))
        out = []
        for field, value in sorted(raw.items()):
            model, text = _str(field), _str(value)
            try:
                out.append(view(parse_desired(model, text), recs))
            except DesiredError as e:  # written by hand: show it, with why it is ignored
                out.append(view(Desired(model=model), recs, error=str(e)))
        return NodeModels(node=node, models=out)

    @writes.put("/v1/nodes/{node}/models/{model:path}", response_model=DesiredView)
    async def put_desired(
        node: str,
        model: str,
        body: DesiredBody,
        by: Actor = Depends(ctx.access.operate),  # noqa: B008
    ) -> DesiredView:
        """Load (``state`` loaded, the default) or unload a model on the node's server."""
        recs = ctx.node_records(node)
        if body.server and f"{node}/{body.server}" not in {r.replica_id for r in recs}:
            names = sorted(r.replica_id.split("/", 1)[1] for r in recs)
            raise ApiError(
                404, "unknown_server", f"node {node!r} has no server {body.server!r}: {names}"
            )
        try:
            d = parse_desired(model, desired_json(Desired(model=model, **_fields(body))))
        except DesiredError as e:
            raise ApiError(422, "invalid_desired", str(e)) from None
        key = schema.desired_key(node)
        r = ctx.node_redis(node)
        old = await redis_op("read", r.hget(key, model))
        if old is None and await redis_op("read", r.hlen(key)) >= MAX_DESIRED:
            raise ApiError(409, "too_many_models", f"{key} has {MAX_DESIRED} fields already")
        new = desired_json(d)
        await redis_op("write", r.hset(key, model, new))
        if old is None or _str(old) != new:
            action = "models.load" if d.loaded else "models.unload"
            await ctx.record(by, action, _target(node, model), _doc(old), _doc(new))
        return view(d, recs)

    @writes.delete("/v1/nodes/{node}/models/{model:path}", response_model=Forgotten)
    async def delete_desired(
        node: str,
        model: str,
        by: Actor = Depends(ctx.access.operate),  # noqa: B008
    ) -> Forgotten:
        """Stop managing the model on the node (nothing is unloaded: use state unloaded)."""
        key, r = schema.desired_key(node), ctx.node_redis(node)
        old = await redis_op("read", r.hget(key, model))
        removed = bool(await redis_op("write", r.hdel(key, model)))
        if removed:
            await ctx.record(by, "models.forget", _target(node, model), _doc(old), None)
        return Forgotten(node=node, model=model, removed=removed)

    api.include_router(writes)
    return api


def _fields(body: DesiredBody) -> dict[str, Any]:
    return {
        "server": body.server,
        "loaded": body.state == "loaded",
        "version": body.version,
        "path": body.path,
        "keep_alive": body.keep_alive,
    }


def _target(node: str, model: str) -> str:
    """What the audit log names a desired-models entry by (the API path's tail)."""
    return f"{node}/models/{model}"


def _doc(raw: Any) -> Any:
    """A stored entry as JSON for the audit log (text if it does not parse; None if none)."""
    if raw is None:
        return None
    try:
        return json.loads(_str(raw))
    except ValueError:
        return _str(raw)


def _str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
