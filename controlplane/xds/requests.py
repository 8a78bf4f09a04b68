"""Request decoding for the xDS grpc servers (ADS, LRS): bytes that are not the expected
message become a ``BadRequest`` value instead of an exception inside grpc.

grpc.aio ends a stream whose request does not parse with UNKNOWN and logs an error with a
traceback; a servicer that receives ``BadRequest`` ends it with INVALID_ARGUMENT and the
reason instead (raise it from a stream's receive task, then ``refuse()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from controlplane.xds.cache import node_problem

__all__ = ["BadRequest", "lenient", "read_first"]


class BadRequest(Exception):
    """A request that is not a valid message (garbage, truncated, a string not UTF-8)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A grpc request deserializer: ``parse(data)``, or a ``BadRequest`` if it fails."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:  # protobuf's DecodeError; whatever stops the parse
            return BadRequest(f"the request is not a valid message: {e}")

    return deserialize


async def read_first(context: Any, what: str) -> Any:
    """The stream's first request, or ``None`` if the client closed first. Ends the stream
    with INVALID_ARGUMENT when it does not parse or carries no usable node (``what``
    names the message type in the reason)."""
    first = await context.read()
    if first is grpc.aio.EOF:
        return None
    if isinstance(first, BadRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.reason)
    if (problem := node_problem(first.node)) is not None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the first {what} must carry a usable node: {problem}",
        )
    return first
