"""``EmbeddedServer``: uvicorn inside an event loop that someone else runs.

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers for its duration; a
process that serves HTTP next to other work (the control plane with gRPC, the fake model
server, the demo's control endpoint) owns its signals and its exit code itself, so this
server leaves them alone. Stop it with ``should_exit = True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the caller owns signals and exit code."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
