"""A tiny real HTTP server for tests, on 127.0.0.1 and a free port, run in a thread.

``StubServer(handler)`` answers every request with ``handler(StubRequest)``; use it as a
context manager so the server always stops. It is a real socket, so real clients (the
Docker SDK, httpx) talk to it unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class StubRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class StubResponse:
    status: int = 200
    body: Any = b""
    """bytes or str as is; anything else is sent as JSON."""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[StubRequest], StubResponse]


class StubServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[StubRequest] = []
        stub = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                req = StubRequest(
                    self.command, parts.path, parse_qs(parts.query), self.rfile.read(size)
                )
                stub.requests.append(req)
                try:
                    resp = stub.handler(req)
                except Exception as e:  # a broken handler shows up as a 500 in the test
                    resp = StubResponse(500, f"stub handler failed: {e!r}")
                body = resp.body
                ctype = "text/plain"
                if not isinstance(body, bytes | str):
                    body, ctype = json.dumps(body), "application/json"
                data = body.encode() if isinstance(body, str) else body
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.headers.get("Content-Type", ctype))
                self.send_header("Content-Length", str(len(data)))
                for k, v in resp.headers.items():
                    if k != "Content-Type":
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
