"""``ResumingStream``: one streamed completion read over as many requests as it takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from controlplane.client.continuation import NotResumable, Received, continuation


@dataclass
class Attempt:
    """One request of a stream: the first, or a resume."""

    status: int = 0
    """HTTP status; 0 when no response came (a transport error before the headers)."""
    headers: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    """Text chunks this request carried."""
    error: str = ""
    """Why it ended before the answer did ('' when it ended the answer)."""
    sent: float = 0.0
    """``time.monotonic()`` when it was sent."""
    answered: float = 0.0
    """When its response headers came (0: never)."""
    ended: float = 0.0
    """When it ended."""


class StreamFailed(Exception):
    """The answer could not be completed; ``received`` holds what arrived."""

    def __init__(self, reason: str, received: Received, attempts: list[Attempt]) -> None:
        super().__init__(reason)
        self.received = received
        self.attempts = attempts


class ResumingStream:
    """Iterate for the answer's text; a stream cut before its end is resumed.

    ``url`` is the edge's ``.../v1/completions`` or ``.../v1/chat/completions`` (relative
    to ``http.base_url`` or absolute); ``body`` the request (``stream`` is set). The first
    request's errors are the caller's: a non-200 answer or no connection raises
    ``StreamFailed`` at once (Envoy has already retried what it could). Once the answer
    has begun, a cut is followed by a resume after ``backoff_s`` (doubling), at most
    ``max_resumes`` times. A cut: the connection closed or reset, a read timeout (no
    chunk within ``timeout``; None: the client's timeout), and for a resume also a 5xx or a
    transport error. A resume answered with a 4xx fails the stream (that server refuses
    the continuation). After the iteration ``received``, ``attempts`` and ``resumes``
    say what happened."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        max_resumes: int = 3,
        timeout: httpx.Timeout | float | None = None,
        backoff_s: float = 0.05,
    ) -> None:
        self._http = http
        self._url = url
        self._body = {**body, "stream": True}
        self._headers = dict(headers or {})
        self._max_resumes = max_resumes
        self._timeout = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        self._backoff_s = backoff_s
        self.received = Received(chat=url.rstrip("/").endswith("chat/completions"))
        self.attempts: list[Attempt] = []

    @property
    def resumes(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def cut(self) -> bool:
        """The first request ended before the answer did."""
        return bool(self.attempts) and bool(self.attempts[0].error)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._run()

    async def text(self) -> str:
        """Read the whole answer; returns its text."""
        async for _ in self:
            pass
        return self.received.text

    def _fail(self, reason: str) -> StreamFailed:
        return StreamFailed(reason, self.received, self.attempts)

    async def _run(self) -> AsyncIterator[str]:
        got = self.received
        for n in range(self._max_resumes + 1):
            body = self._body
            if n > 0:
                await asyncio.sleep(self._backoff_s * 2 ** (n - 1))
                try:
                    rest = continuation(self._body, got)
                except NotResumable as e:
                    raise self._fail(f"stream cut and not resumable: {e}") from None
                if rest is None:
                    return  # the cut came after the last token the budget allowed
                body = rest
            a = Attempt(sent=time.monotonic())
            self.attempts.append(a)
            try:
                async for piece in self._attempt(a, body, first=n == 0):
                    yield piece
            finally:
                a.ended = time.monotonic()
            if got.finished:
                a.error = ""
                return
            a.error = a.error or "stream ended before [DONE]"
        raise self._fail(f"stream cut {len(self.attempts)} times: {self.attempts[-1].error}")

    async def _attempt(self, a: Attempt, body: dict[str, Any], first: bool) -> AsyncIterator[str]:
        """One request: yields its text; records in ``a`` how it ended."""
        got = self.received
        try:
            async with self._http.stream(
                "POST", self._url, json=body, headers=self._headers, timeout=self._timeout
            ) as r:
                a.status = r.status_code
                a.answered = time.monotonic()
                a.headers = dict(r.headers)
                if r.status_code != 200:
                    detail = (await r.aread())[:300].decode("utf-8", "replace")
                    a.error = f"http {r.status_code}: {detail}"
                    if first or r.status_code < 500:
                        raise self._fail(a.error)
                    return
                async for line in r.aiter_lines():
                    try:
                        piece = got.feed(line)
                    except ValueError as e:
                        a.error = str(e)
                        raise self._fail(a.error) from None
                    if piece:
                        a.tokens += 1
                        yield piece
                    if got.done:
                        break
        except httpx.TransportError as e:
            a.error = f"{type(e).__name__}: {e}"[:200]
            if first and a.status == 0:
                raise self._fail(a.error) from e
