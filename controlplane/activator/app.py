"""The activator's HTTP side: hold, forward back through Envoy, or answer why not.

Envoy routes a cold model's requests here with two headers it sets itself:
``x-aixds-model`` (the model) and ``x-aixds-return`` (its listener address). For each one:

1. A request that already went through an activator (``x-aixds-activated``) came back
   because that Envoy has not got the new route yet: answered at once with 503 and
   ``x-aixds-loop``, and the activator that sent it tries again shortly.
2. A model no replica can load and nobody placed: 404, as Envoy answers an unknown model.
3. A model with a fallback (``Intent.placement[m].fallback``) that serves: sent now, as a
   request for the fallback (body ``model`` and ``x-model`` rewritten), the answer marked
   ``x-aixds-fallback``. The arrival still counts as demand, so the model gets loaded.
4. Otherwise held (counted as waiting: the placement loads or wakes the model) until a
   replica of the model serves, then sent back to the Envoy it came from with
   ``x-aixds-activated``, and the answer (a token stream too) relayed as it comes. Past the
   bound (default 120 s): 503 with ``Retry-After`` and an OpenAI-style error.

Demand: a held request counts while it waits (``waiting``); once served it reaches the
model's own cluster and the load reports count it, so an arrival is recorded only for the
requests that never get there (fallback, timeout, refused): counting both would show the
model a second burst one load time after the first.

The return address is trusted only for its port when its host is not the caller's own
address: a request sent straight to the activator can make it call back only the caller.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controlplane.activator.demand import ActivatorDemand
from controlplane.activator.readiness import Readiness
from controlplane.intent import Intent
from controlplane.ir import ACTIVATOR_MODEL_HEADER, ACTIVATOR_RETURN_HEADER

log = logging.getLogger(__name__)

ACTIVATED_HEADER = "x-aixds-activated"
LOOP_HEADER = "x-aixds-loop"
FALLBACK_HEADER = "x-aixds-fallback"
WAITED_HEADER = "x-aixds-waited-ms"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        ACTIVATOR_MODEL_HEADER,
        ACTIVATOR_RETURN_HEADER,
    }
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@dataclass(frozen=True, slots=True)
class ActivatorSettings:
    hold_s: float = 120.0
    """Longest a request is held for a load; then 503 with Retry-After."""
    retry_after_s: int = 10
    """The ``Retry-After`` of that 503."""
    loop_retry_s: float = 0.1
    """Wait before sending again a request the Envoy bounced back (no new route yet)."""
    max_held: int = 10_000
    """Requests held at once, all models; more are answered 503 at once."""
    model_header: str = "x-model"


class ActivatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "aixds_activator_requests",
            "Requests for cold models, by how they ended: served (after waiting), fallback "
            "(served by the fallback model), timeout (503 after the hold bound), unknown "
            "(404), refused (too many held), failed (Envoy unreachable or reset)",
            ["model", "outcome"],
            registry=registry,
        )
        self.waiting = Gauge(
            "aixds_activator_waiting",
            "Requests held now, waiting for a replica of their model",
            ["model"],
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "aixds_activator_wait_seconds",
            "How long a served request was held",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=registry,
        )


def error(status: int, message: str, type_: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class Activator:
    def __init__(
        self,
        readiness: Readiness,
        intent: Callable[[], Intent],
        loadable: Callable[[], set[str]],
        demand: ActivatorDemand,
        metrics: ActivatorMetrics,
        settings: ActivatorSettings = ActivatorSettings(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ready = readiness
        self._intent = intent
        self._loadable = loadable
        self._demand = demand
        self._m = metrics
        self._s = settings
        self._clock = clock
        self._held = 0
        self.closing = False
        """Shutting down: held requests are answered 503 at their next check (within 1 s)."""
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=METHODS)])

    @property
    def held(self) -> int:
        """Requests held now."""
        return self._held

    async def aclose(self) -> None:
        await self._client.aclose()

    async def handle(self, request: Request) -> Response:
        if ACTIVATED_HEADER in request.headers:
            return error(
                503,
                "this Envoy has no route for the model yet",
                "ServiceUnavailable",
                {LOOP_HEADER: "1"},
            )
        model = request.headers.get(ACTIVATOR_MODEL_HEADER, "")
        back = return_address(request)
        if not model or back is None:
            return error(
                400,
                f"not routed by Envoy: {ACTIVATOR_MODEL_HEADER} and "
                f"{ACTIVATOR_RETURN_HEADER} are required",
                "invalid_request_error",
            )
        body = await request.body()
        if model not in self._loadable() and not self._ready.ready(model):
            self._m.requests.labels(model, "unknown").inc()
            return error(
                404, f"model {model!r} is not served and no replica can load it", "NotFoundError"
            )
        fallback = self._intent().placement.get(model)
        if fallback is not None and fallback.fallback and self._ready.ready(fallback.fallback):
            rewritten = with_model(body, fallback.fallback)
            if rewritten is not None:
                self._m.requests.labels(model, "fallback").inc()
                self._demand.arrived(model)  # served as another model: LRS cannot count it
                headers = {FALLBACK_HEADER: fallback.fallback}
                override = {self._s.model_header: fallback.fallback}
                sent = await self._forward(
                    request, back, rewritten, model, headers, override, bounce_ok=True
                )
                if sent is not None:
                    return sent  # else that Envoy has no route for the fallback yet: hold
        if self._held >= self._s.max_held:
            self._m.requests.labels(model, "refused").inc()
            self._demand.arrived(model)
            return error(
                503,
                "too many requests waiting for models to load",
                "ServiceUnavailable",
                {"Retry-After": str(self._s.retry_after_s)},
            )
        start = self._clock()
        deadline = start + self._s.hold_s
        self._held += 1
        held_since = self._demand.hold(model)
        self._m.waiting.labels(model).inc()
        try:
            while True:
                ready = await self._wait(request, model, deadline)
                if ready is None:
                    return Response(status_code=499)  # the client went away
                if not ready:
                    break
                waited = {WAITED_HEADER: str(round((self._clock() - start) * 1000))}
                reply = await self._forward(request, back, body, model, waited, {}, bounce_ok=True)
                if reply is not None:
                    self._m.wait_seconds.observe(self._clock() - start)
                    return reply
                if self._clock() >= deadline:
                    break
                await asyncio.sleep(self._s.loop_retry_s)
        finally:
            self._held -= 1
            self._demand.release(model, held_since)
            self._m.waiting.labels(model).dec()
        self._m.requests.labels(model, "timeout").inc()
        self._demand.arrived(model)
        if self.closing:
            return error(
                503,
                f"model {model!r} is loading and this control plane is shutting down; retry",
                "ServiceUnavailable",
                {"Retry-After": "1"},
            )
        return error(
            503,
            f"model {model!r} is loading: no replica was ready within {self._s.hold_s:g} s;"
            " retry later",
            "ServiceUnavailable",
            {"Retry-After": str(self._s.retry_after_s)},
        )

    async def _wait(self, request: Request, model: str, deadline: float) -> bool | None:
        """True: ready; False: past the deadline; None: the client disconnected."""
        while True:
            step = min(deadline, self._clock() + 1.0)
            if await self._ready.wait(model, step):
                return True
            if await request.is_disconnected():
                return None
            if self._clock() >= deadline or self.closing:
                return False

    async def _forward(
        self,
        request: Request,
        back: str,
        body: bytes,
        model: str,
        extra: dict[str, str],
        override: dict[str, str],
        *,
        bounce_ok: bool = False,
    ) -> Response | None:
        """Send the request back through Envoy and relay the answer. With ``bounce_ok``,
        ``None`` when that Envoy bounced it (no route yet)."""
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in override
        ]
        headers += list(override.items())
        headers.append((ACTIVATED_HEADER, "1"))
        url = f"http://{back}{request.url.path}"
        if request.url.query:
            url += "?" + request.url.query
        req = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await self._client.send(req, stream=True)
        except httpx.HTTPError as e:
            self._m.requests.labels(model, "failed").inc()
            log.warning("activator: sending %s back to Envoy %s failed: %s", model, back, e)
            return error(
                502, f"could not send the request back to Envoy at {back}: {e}", "BadGateway"
            )
        if bounce_ok and upstream.status_code == 503 and LOOP_HEADER in upstream.headers:
            await upstream.aclose()
            return None
        if FALLBACK_HEADER not in extra:
            self._m.requests.labels(model, "served").inc()
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        out.update(extra)
        return StreamingResponse(
            _relay(upstream),
            status_code=upstream.status_code,
            headers=out,
            background=BackgroundTask(upstream.aclose),
        )


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in upstream.aiter_raw():
        yield chunk


def return_address(request: Request) -> str | None:
    """Where to send the request back: Envoy's listener. Its host is used only if it is the
    caller's own address (or both are loopback); otherwise the caller's address with the
    listener's port."""
    raw = request.headers.get(ACTIVATOR_RETURN_HEADER, "")
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host.strip("[]")
    peer = request.client.host if request.client else ""
    try:
        h, p = ipaddress.ip_address(host), ipaddress.ip_address(peer)
    except ValueError:
        return None
    use = h if h == p or (h.is_loopback and p.is_loopback) else p
    return f"[{use}]:{port}" if use.version == 6 else f"{use}:{port}"


def with_model(body: bytes, model: str) -> bytes | None:
    """The JSON body with ``model`` replaced (None if it is not a JSON object)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    doc["model"] = model
    return json.dumps(doc).encode()
