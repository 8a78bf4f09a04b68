"""Bearer-token check for API writes. Reads are open.

A server started without a token refuses every write with 403 and says how to set one;
with a token, a write without the right ``Authorization: Bearer <token>`` gets 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from controlplane.api.errors import ApiError

bearer = HTTPBearer(
    auto_error=False,
    description="API token of `aixds serve` (--api-token or AIXDS_API_TOKEN)",
)


def writer(token: str) -> Callable[..., None]:
    """A FastAPI dependency that lets a request through only with ``token``."""

    def require(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if not token:
            raise ApiError(
                403,
                "writes_disabled",
                "this control plane has no API token, so its API is read-only: start "
                "`aixds serve` with --api-token TOKEN (or AIXDS_API_TOKEN=TOKEN) and send "
                "Authorization: Bearer TOKEN",
            )
        given = creds.credentials.encode() if creds is not None else b""
        if not hmac.compare_digest(given, token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API token: send Authorization: Bearer TOKEN "
                "(the CLI reads AIXDS_API_TOKEN or --token)",
                headers={"www-authenticate": "Bearer"},
            )

    return require
