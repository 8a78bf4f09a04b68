"""Model placement: ``GET /v1/placement``, ``PUT`` / ``DELETE /v1/placement/{model}``.

Intent per model (stored with its revision, like drains): ``min_resident`` per region (the
key ``""``: every region) pinned replicas that are never slept or unloaded, ``max_replicas``
(0: no bound), ``priority`` for GPU memory, and a ``fallback`` model that answers while the
model has no ready replica. ``GET`` also shows the acting replica's last decision: per
model the replicas wanted, awake and asleep, why, the requests held for it, and its demand
forecast (keep-alive, pre-warm, expected rate).
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import ApiError, error_responses
from controlplane.api.schemas import EnvoysView, Revision
from controlplane.fleet import schema
from controlplane.fleet.audit import Actor
from controlplane.intent import Intent, ModelPlacement, set_placement
from controlplane.runtime.rollout_ops import Applied

_ERRORS = error_responses(
    (400, "the body could not be parsed"),
    (401, "missing or unknown API token"),
    (403, "the token lacks scope admin, or no token may write (read-only API)"),
    (409, "revision conflict"),
    (422, "a count out of range, or a model that is its own fallback"),
    (503, "Redis unreachable or state not read yet: retry"),
)


class PlacementBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"min_resident": {"us-east": 1}, "priority": 10, "fallback": "llama-8b"}]
        },
    )

    min_resident: dict[StrictStr, StrictInt] = Field(
        default_factory=dict,
        description='pinned replicas per region ("" = every region), each 0..100000',
    )
    max_replicas: StrictInt = Field(default=0, ge=0, le=100_000, description="0: no bound")
    priority: StrictInt = Field(default=0, ge=-1_000_000, le=1_000_000)
    fallback: StrictStr = Field(default="", max_length=1024, description="empty: none")
    revision: Revision = None


class ModelPlacementView(BaseModel):
    model: str
    min_resident: dict[str, int]
    max_replicas: int
    priority: int
    fallback: str


class PlacementView(BaseModel):
    revision: int
    pinned: list[ModelPlacementView]
    """What operators placed (intent)."""
    decision: dict[str, Any] | None
    """The acting replica's last decision (null: none in the last minute)."""


class PlacementResult(PlacementView):
    changed: bool
    converged: bool
    envoys: EnvoysView


def _view(model: str, p: ModelPlacement) -> ModelPlacementView:
    return ModelPlacementView(
        model=model,
        min_resident=dict(p.min_resident),
        max_replicas=p.max_replicas,
        priority=p.priority,
        fallback=p.fallback,
    )


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["placement"])
    writes = APIRouter(
        tags=["placement"], dependencies=[Depends(ctx.access.admin)], responses=_ERRORS
    )

    async def view(it: Intent) -> PlacementView:
        decision = None
        if ctx.redis is not None:
            raw = await redis_op("read the placement decision", ctx.redis.get(schema.PLACEMENT_KEY))
            decision = json.loads(raw) if raw else None
        return PlacementView(
            revision=it.revision,
            pinned=[_view(m, p) for m, p in sorted(it.placement.items())],
            decision=decision,
        )

    async def result(applied: Applied) -> PlacementResult:
        return PlacementResult(
            **(await view(applied.intent)).model_dump(),
            changed=applied.changed,
            converged=applied.converged,
            envoys=EnvoysView(current=applied.envoys_current, total=applied.envoys_total),
        )

    @api.get("/v1/placement", response_model=PlacementView, responses={503: _ERRORS[503]})
    async def get_placement() -> PlacementView:
        """Pins and bounds per model, and the last placement decision with its reasons."""
        return await view(ctx.require_intents().current())

    @writes.put("/v1/placement/{model:path}", response_model=PlacementResult)
    async def put_placement(
        model: str,
        body: PlacementBody,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> PlacementResult:
        """Set one model's placement (replaces the previous one of that model)."""
        for region, n in body.min_resident.items():
            if not 0 <= n <= 100_000:
                raise ApiError(
                    422, "invalid", f"min_resident[{region!r}] must be 0..100000, got {n}"
                )
        if body.fallback == model:
            raise ApiError(422, "invalid", f"{model!r} cannot be its own fallback")
        p = ModelPlacement(
            min_resident=MappingProxyType(dict(body.min_resident)),
            max_replicas=body.max_replicas,
            priority=body.priority,
            fallback=body.fallback,
        )
        applied = await ctx.require_rollouts().change(
            "placement",
            model,
            lambda it, _c, _now: set_placement(it, model, p),
            by=by,
            expected_revision=body.revision,
        )
        return await result(applied)

    @writes.delete("/v1/placement/{model:path}", response_model=PlacementResult)
    async def delete_placement(
        model: str,
        revision: int | None = Query(
            default=None, ge=0, description="refuse (409) unless the intent is at this revision"
        ),
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> PlacementResult:
        """Forget the model's placement: no pins, no bounds, no fallback."""
        applied = await ctx.require_rollouts().change(
            "placement",
            model,
            lambda it, _c, _now: set_placement(it, model, None),
            by=by,
            expected_revision=revision,
        )
        return await result(applied)

    api.include_router(writes)
    return api
