"""The audit log: ``GET /v1/audit?limit=N&since=ID`` (scope read).

Who changed what and when, oldest first: without ``since`` the latest ``limit`` entries;
with ``since`` (a stream id, exclusive) the ``limit`` entries after it, so a client polls
with ``since=<last_id>`` of its previous answer. Entries are written by every change of
intent, desired models and GPU-fault clears (``fleet.audit`` has the fields).
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel

from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import error_responses
from controlplane.fleet.audit import STREAM_ID, AuditEntry

MAX_LIMIT = 10_000

_ERRORS = error_responses(
    (422, "limit out of 1..10000, or since is not a stream id (<ms> or <ms>-<seq>)"),
    (503, "Redis unreachable, or this server keeps no audit log"),
)


class AuditView(BaseModel):
    entries: list[AuditEntry]
    """Oldest first; the fields are described in ``controlplane.fleet.audit``: id (stream id, what
    ``since`` takes), at, who, action, target, old and new (only the parts that changed),
    revision (intent revision written, 0 outside the intent), request_id."""
    last_id: str | None
    """The newest entry's id: ask again with ``since`` set to it for what comes next."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["audit"])

    @api.get("/v1/audit", response_model=AuditView, responses=_ERRORS)
    async def get_audit(
        limit: int = Query(default=100, ge=1, le=MAX_LIMIT, description="entries at most"),
        since: str | None = Query(
            default=None,
            pattern=f"^{STREAM_ID.pattern}$",
            description="only entries after this stream id (exclusive), oldest first",
        ),
    ) -> AuditView:
        """Who changed what, when, from what to what; oldest first."""
        trail = ctx.require_audit()
        entries = await redis_op("read the audit log", trail.store.read(limit, since or ""))
        return AuditView(entries=entries, last_id=entries[-1].id if entries else since)

    return api
