"""Operator GPU-fault clearing: ``POST /v1/nodes/{node}/gpu-faults/clear``.

A GPU fault (XID critical error, new uncorrectable ECC error, remapped-row failure) latches
in the agent and keeps the node's replicas out of EDS. Clearing writes a time stamp at
``fault_clear_key(node)``; the node's agent forgets latched faults older than it within a
second, and its replicas return if the fault is really gone. Each clear is in the audit
log (``gpu-faults.clear``, target the node).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import error_responses
from controlplane.fleet.audit import Actor
from controlplane.fleet.schema import fault_clear_key

_ERRORS = error_responses(
    (401, "missing or unknown API token"),
    (403, "the token lacks scope operate, or no token may write (read-only API)"),
    (404, "no replica of that node is known"),
    (503, "Redis unreachable"),
)


class FaultClear(BaseModel):
    node: str
    cleared_before: float
    """Latched faults older than this (epoch seconds) are forgotten by the agent."""
    replicas: list[str]
    """The node's replicas that were out because of a faulty GPU."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["gpu faults"])

    @api.post(
        "/v1/nodes/{node}/gpu-faults/clear",
        response_model=FaultClear,
        responses=_ERRORS,
    )
    async def clear_gpu_faults(
        node: str,
        by: Actor = Depends(ctx.access.operate),  # noqa: B008
    ) -> FaultClear:
        recs = ctx.node_records(node)
        client = ctx.node_redis(node)
        now = time.time()
        before = await redis_op("read the last clear", client.get(fault_clear_key(node)))
        await redis_op("write the clear", client.set(fault_clear_key(node), repr(now)))
        faulty = sorted(r.replica_id for r in recs if any(g.faulty for g in r.gpus))
        await ctx.record(
            by,
            "gpu-faults.clear",
            node,
            {"cleared_before": _number(before)},
            {"cleared_before": now, "faulty_replicas": faulty},
        )
        return FaultClear(node=node, cleared_before=now, replicas=faulty)

    return api


def _number(raw: Any) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
