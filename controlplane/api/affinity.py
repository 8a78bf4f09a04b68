"""Session affinity per model: ``GET /v1/affinity``, ``PUT`` / ``DELETE /v1/affinity/{model}``.

With affinity on (the default), the turns of one session (the session header, or the
body's ``user``) go to one replica of its version, where its prefix cache is; with it off,
every request follows load. The API's setting lives in the intent document (with its
revision, like drains) and wins over fleet.yaml's ``affinity``; ``DELETE`` removes it.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from controlplane.api.context import ApiContext
from controlplane.api.errors import error_responses
from controlplane.api.schemas import EnvoysView, Revision
from controlplane.decide.affinity import set_affinity
from controlplane.fleet.audit import Actor
from controlplane.intent import Intent
from controlplane.runtime.rollout_ops import Applied

_ERRORS = error_responses(
    (400, "the body could not be parsed"),
    (401, "missing or unknown API token"),
    (403, "the token lacks scope admin, or no token may write (read-only API)"),
    (409, "revision conflict"),
    (422, "not a model name, or enabled is not true/false"),
    (503, "Redis unreachable or state not read yet: retry"),
)


class AffinityBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})

    enabled: StrictBool = Field(
        description="true: a session sticks to one replica; false: load only"
    )
    revision: Revision = None


class ModelAffinity(BaseModel):
    model: str
    enabled: bool
    source: Literal["api", "fleet.yaml", "default"]
    """Where the setting comes from: the API (stored intent), fleet.yaml, or the default."""


class AffinityView(BaseModel):
    revision: int
    session_header: str
    """The request header that carries a session key (else the body's ``user``)."""
    default: bool
    models: list[ModelAffinity]
    """Every model the fleet serves or a setting names."""


class AffinityResult(AffinityView):
    changed: bool
    converged: bool
    envoys: EnvoysView


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["affinity"])
    writes = APIRouter(
        tags=["affinity"], dependencies=[Depends(ctx.access.admin)], responses=_ERRORS
    )

    def view(it: Intent) -> AffinityView:
        served = {m.name for o in ctx.watcher.view.values() for m in o.record.models}
        names = served | set(it.affinity) | set(it.affinity_base)
        return AffinityView(
            revision=it.revision,
            session_header=it.session_header,
            default=it.affinity_default,
            models=[
                ModelAffinity(
                    model=m,
                    enabled=it.affinity_on(m),
                    source="api"
                    if m in it.affinity
                    else "fleet.yaml"
                    if m in it.affinity_base
                    else "default",
                )
                for m in sorted(names)
            ],
        )

    def result(applied: Applied) -> AffinityResult:
        return AffinityResult(
            **view(applied.intent).model_dump(),
            changed=applied.changed,
            converged=applied.converged,
            envoys=EnvoysView(current=applied.envoys_current, total=applied.envoys_total),
        )

    @api.get("/v1/affinity", response_model=AffinityView, responses={503: _ERRORS[503]})
    def get_affinity() -> AffinityView:
        """Session affinity of every model, and where each setting comes from."""
        return view(ctx.require_intents().current())

    @writes.put("/v1/affinity/{model:path}", response_model=AffinityResult)
    async def put_affinity(
        model: str,
        body: AffinityBody,
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> AffinityResult:
        """Turn session affinity on or off for one model (wins over fleet.yaml)."""
        applied = await ctx.require_rollouts().change(
            "affinity",
            model,
            lambda it, _c, _now: set_affinity(it, model, body.enabled),
            by=by,
            expected_revision=body.revision,
        )
        return result(applied)

    @writes.delete("/v1/affinity/{model:path}", response_model=AffinityResult)
    async def delete_affinity(
        model: str,
        revision: int | None = Query(
            default=None, ge=0, description="refuse (409) unless the intent is at this revision"
        ),
        by: Actor = Depends(ctx.access.admin),  # noqa: B008
    ) -> AffinityResult:
        """Forget the API's setting: fleet.yaml's (or the default) applies again."""
        applied = await ctx.require_rollouts().change(
            "affinity",
            model,
            lambda it, _c, _now: set_affinity(it, model, None),
            by=by,
            expected_revision=revision,
        )
        return result(applied)

    api.include_router(writes)
    return api
