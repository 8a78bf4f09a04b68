"""Operator GPU-fault clearing: ``POST /v1/nodes/{node}/gpu-faults/clear``.

A GPU fault (XID critical error, new uncorrectable ECC error, remapped-row failure) latches
in the agent and keeps the node's replicas out of EDS. Clearing writes a time stamp at
``fault_clear_key(node)``; the node's agent forgets latched faults older than it within a
second, and its replicas return if the fault is really gone.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from controlplane.api.auth import writer
from controlplane.api.context import ApiContext, redis_op
from controlplane.api.errors import error_responses
from controlplane.fleet.schema import fault_clear_key

_ERRORS = error_responses(
    (401, "missing or wrong API token"),
    (403, "the server has no API token: writes are disabled"),
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
        dependencies=[Depends(writer(ctx.api_token))],
    )
    async def clear_gpu_faults(node: str) -> FaultClear:
        recs = ctx.node_records(node)
        client = ctx.node_redis(node)
        now = time.time()
        await redis_op("write the clear", client.set(fault_clear_key(node), repr(now)))
        faulty = sorted(r.replica_id for r in recs if any(g.faulty for g in r.gpus))
        return FaultClear(node=node, cleared_before=now, replicas=faulty)

    return api
