"""Every API error is JSON: ``{"error": "<code>", "detail": "<what is wrong>"}``.

Client mistakes are 4xx with a stable ``error`` code; a 503 means "retry later" (Redis
unreachable, state not read yet); a 500 is a bug, logged with its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.decide.rollout import ErrorKind, RolloutError
from controlplane.fleet.intent_store import RevisionConflict
from controlplane.runtime.rollout_ops import Unavailable

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    """Stable machine-readable code, e.g. ``unknown_model``, ``revision_conflict``."""
    detail: str
    """What is wrong and, where it helps, what to do."""
    revision: int | None = None
    """On ``revision_conflict``: the stored intent revision."""


def error_responses(*statuses: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these ``(status, description)`` pairs, all ``ErrorBody``."""
    return {s: {"model": ErrorBody, "description": d} for s, d in statuses}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


STATUS_OF_KIND = {
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.NOT_READY: 409,
    ErrorKind.INVALID: 422,
}

_CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"error": code, "detail": detail, **extra}
    return JSONResponse(body, status_code=status)


def _loc(loc: Any) -> str:
    return ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else str(loc)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a JSON error."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        resp = error(exc.status, exc.code, exc.detail)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(RolloutError)
    async def rollout_error(_: Request, exc: RolloutError) -> JSONResponse:
        return error(STATUS_OF_KIND[exc.kind], exc.code, exc.detail)

    @app.exception_handler(RevisionConflict)
    async def conflict(_: Request, exc: RevisionConflict) -> JSONResponse:
        return error(
            409,
            "revision_conflict",
            f"intent is at revision {exc.current}, not {exc.expected}: it changed meanwhile; "
            "read it again and retry",
            revision=exc.current,
        )

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        resp = error(503, exc.code, exc.detail)
        resp.headers["retry-after"] = "1"
        return resp

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_loc(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "error")
        resp = error(exc.status_code, code, str(exc.detail))
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("API %s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        return error(500, "internal", "internal error; the control plane's log has the details")
