"""Who may call the API: bearer tokens with scopes (``api.tokens``), as FastAPI dependencies.

``Access.read``, ``.operate`` and ``.admin`` each let a request through only with
``Authorization: Bearer <token>`` of a token that has that scope (or a higher one), and
return the caller as an ``Actor`` (the token's name and the request id) for the audit log.

- No token that may write is configured: a write gets 403 ``writes_disabled``, saying how
  to configure one (the API is read-only, as before tokens had scopes).
- No token, or one that is not known: 401 ``unauthorized`` (``WWW-Authenticate: Bearer``).
- A known token without the scope: 403 ``insufficient_scope``; the body names the token's
  scope and the one needed (also in ``WWW-Authenticate``, as RFC 6750 has it).

Reads are open unless ``require_read`` (``aixds serve --require-read-token``). The request
id is the caller's ``X-Request-Id`` when it is a plain token of up to 128 characters, else a
new one; it is sent back in ``X-Request-Id`` and written into the audit log.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter

from controlplane.api.errors import ApiError
from controlplane.api.tokens import Scope, TokenTable, load_tokens
from controlplane.fleet.audit import Actor

bearer = HTTPBearer(
    auto_error=False,
    description="API token of `aixds serve` (--api-token / AIXDS_API_TOKEN, --tokens-file, "
    "AIXDS_API_TOKENS)",
)

ANONYMOUS = "anonymous"
"""Who an open read is by."""
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Dependency = Callable[..., Actor]


class AccessMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.denied = Counter(
            "aixds_api_denied",
            "API requests refused by token check, by reason (unauthorized: no or unknown "
            "token; insufficient_scope; writes_disabled: no token may write)",
            ["reason"],
            registry=registry,
        )


class Access:
    """The tokens this API accepts and whether reads need one (see the module docstring)."""

    def __init__(
        self,
        tokens: TokenTable,
        *,
        require_read: bool = False,
        metrics: AccessMetrics | None = None,
    ) -> None:
        self.tokens = tokens
        self.require_read = require_read
        self._metrics = metrics
        self.read: Dependency = self._need(Scope.READ)
        self.operate: Dependency = self._need(Scope.OPERATE)
        self.admin: Dependency = self._need(Scope.ADMIN)

    @classmethod
    def single(cls, api_token: str) -> Access:
        """One admin token, or none (read-only): ``--api-token`` alone."""
        return cls(load_tokens(api_token=api_token))

    @property
    def writes_enabled(self) -> bool:
        """Some token may write (operate or admin)."""
        best = self.tokens.best()
        return best is not None and best >= Scope.OPERATE

    def _deny(self, status: int, reason: str, detail: str, headers: dict[str, str]) -> ApiError:
        if self._metrics is not None:
            self._metrics.denied.labels(reason).inc()
        return ApiError(status, reason, detail, headers=headers)

    def _need(self, scope: Scope) -> Dependency:
        def require(
            request: Request,
            response: Response,
            creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
        ) -> Actor:
            rid = request_id(request)
            response.headers[REQUEST_ID_HEADER] = rid
            if scope == Scope.READ and not self.require_read:
                return Actor(ANONYMOUS, rid)
            if scope > Scope.READ and not self.writes_enabled:
                raise self._deny(
                    403,
                    "writes_disabled",
                    "this control plane has no API token that may write, so its API is "
                    "read-only: start `aixds serve` with --api-token TOKEN (or "
                    "AIXDS_API_TOKEN=TOKEN), or --tokens-file with an operate or admin "
                    "token, and send Authorization: Bearer TOKEN",
                    {REQUEST_ID_HEADER: rid},
                )
            presented = creds.credentials if creds is not None else None
            if presented is None and scope == Scope.READ and request.method == "GET":
                # RFC 6750 2.3, for reads only: a browser's EventSource (the dashboard's
                # feed) cannot send an Authorization header
                presented = request.query_params.get("access_token")
            token = self.tokens.find(presented) if presented else None
            if token is None:
                raise self._deny(
                    401,
                    "unauthorized",
                    "missing or unknown API token: send Authorization: Bearer TOKEN "
                    "(the CLI reads AIXDS_API_TOKEN or --token)",
                    {"www-authenticate": "Bearer", REQUEST_ID_HEADER: rid},
                )
            if token.scope < scope:
                raise self._deny(
                    403,
                    "insufficient_scope",
                    f"token {token.name!r} has scope {token.scope.label}; "
                    f"{request.method} {request.url.path} needs scope {scope.label}",
                    {
                        "www-authenticate": (
                            f'Bearer error="insufficient_scope", scope="{scope.label}"'
                        ),
                        REQUEST_ID_HEADER: rid,
                    },
                )
            return Actor(token.name, rid)

        return require


def request_id(request: Request) -> str:
    """The caller's ``X-Request-Id`` if it is a plain token, else a new random one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
