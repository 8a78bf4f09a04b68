"""Operator drains: ``GET /v1/drains``, ``POST`` / ``DELETE /v1/drains/{target}``.

A target is a replica id (``node/name``) or a node name (every replica of that node, now
or later). A drained replica stays in EDS as DRAINING: no new requests, the ones in
flight finish. Drains live in the intent document in Redis (with its revision, like
rollouts), so they survive control-plane restarts and apply on every replica.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from controlplane.api.context import ApiContext
from controlplane.api.errors import error_responses
from controlplane.api.schemas import EnvoysView, RevisionOnly
from controlplane.decide.drains import drain, undrain
from controlplane.fleet.audit import Actor
from controlplane.intent import Intent
from controlplane.runtime.rollout_ops import Applied

_ERRORS = error_responses(
    (400, "the body could not be parsed"),
    (401, "missing or unknown API token"),
    (403, "the token lacks scope operate, or no token may write (read-only API)"),
    (404, "no replica or node of that name is known"),
    (409, "revision conflict"),
    (422, "not a node name or replica id"),
    (503, "Redis unreachable or state not read yet: retry"),
)


class DrainView(BaseModel):
    target: str
    kind: Literal["node", "replica"]
    replicas: list[str]
    """The replicas it drains now (fresh records in the fleet view)."""


class DrainsView(BaseModel):
    revision: int
    drained: list[DrainView]


class DrainResult(DrainsView):
    changed: bool
    """False: the intent already said this; nothing was written."""
    converged: bool
    """Every Envoy connected to this replica ACKed the new config before the answer."""
    envoys: EnvoysView


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["drains"])
    writes = APIRouter(
        tags=["drains"], dependencies=[Depends(ctx.access.operate)], responses=_ERRORS
    )

    def view(it: Intent) -> list[DrainView]:
        records = [o.record for o in ctx.watcher.view.values()]
        return [
            DrainView(
                target=t,
                kind="replica" if "/" in t else "node",
                replicas=sorted(r.replica_id for r in records if t in (r.replica_id, r.node)),
            )
            for t in sorted(it.drained)
        ]

    def result(applied: Applied) -> DrainResult:
        return DrainResult(
            revision=applied.intent.revision,
            drained=view(applied.intent),
            changed=applied.changed,
            converged=applied.converged,
            envoys=EnvoysView(current=applied.envoys_current, total=applied.envoys_total),
        )

    @api.get("/v1/drains", response_model=DrainsView, responses={503: _ERRORS[503]})
    def list_drains() -> DrainsView:
        """Every drained replica and node, with the replicas each drains now."""
        it = ctx.require_intents().current()
        return DrainsView(revision=it.revision, drained=view(it))

    @writes.post("/v1/drains/{target:path}", response_model=DrainResult)
    async def post_drain(
        target: str,
        body: RevisionOnly | None = None,
        by: Actor = Depends(ctx.access.operate),  # noqa: B008
    ) -> DrainResult:
        """Drain a replica (``node/name``) or a whole node: no new requests."""
        known = {o.record.replica_id for o in ctx.watcher.view.values()}
        known |= {o.record.node for o in ctx.watcher.view.values()}
        applied = await ctx.require_rollouts().change(
            "drain",
            target,
            lambda it, _c, _now: drain(it, target, known),
            by=by,
            expected_revision=body.revision if body else None,
        )
        return result(applied)

    @writes.delete("/v1/drains/{target:path}", response_model=DrainResult)
    async def delete_drain(
        target: str,
        revision: int | None = Query(
            default=None, ge=0, description="refuse (409) unless the intent is at this revision"
        ),
        by: Actor = Depends(ctx.access.operate),  # noqa: B008
    ) -> DrainResult:
        """Undo a drain: the replica or node takes requests again."""
        applied = await ctx.require_rollouts().change(
            "undrain",
            target,
            lambda it, _c, _now: undrain(it, target),
            by=by,
            expected_revision=revision,
        )
        return result(applied)

    api.include_router(writes)
    return api
