"""The fake vLLM server as an ASGI app: OpenAI endpoints, health, metrics and control.

``FakeLLM(config).app`` is a plain ASGI app: serve it with uvicorn (see ``fake_llm``) or
call it in-process through ``httpx.ASGITransport``. Every response carries
``x-replica: <replica_id>`` so a test can count which replica served it.

Endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/health``,
``/metrics`` (vLLM's names), ``/control`` (GET: state; POST: switches, see ``control``)
``/sim/gpu`` (the simulated GPU in NVML's units, see ``simgpu``) and ``/sim/available``
(what it can load on demand, see ``residency``). With ``runtime_lora`` or ``available``,
also vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (see ``lora``):
loaded adapters and available models are listed and served like the base model. With
``sleep_mode``, vLLM's ``POST /sleep?level=1|2``, ``POST /wake_up[?tags=...]`` and
``GET /is_sleeping``: asleep, inference answers 503 (as vLLM's protected endpoints do)
while ``/v1/models`` and ``/health`` still answer; ``/sleep`` aborts the requests in
flight, as vLLM's default ``mode=abort`` does (``?mode=wait`` lets them finish first,
refusing new ones meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.sim import openai_format as fmt
from controlplane.sim.control import ControlError, parse_control
from controlplane.sim.engine import Engine, Finish, Knobs, Overloaded, Seq
from controlplane.sim.lora import LoraAdapters, LoraRefused
from controlplane.sim.metrics import CONTENT_TYPE, ServerMetrics
from controlplane.sim.prefix_cache import BLOCK_SIZE
from controlplane.sim.residency import (
    DEFAULT_LOAD_MS,
    DEFAULT_WAKE_MS,
    TAGS,
    AvailableSpec,
    Residency,
    parse_tags,
)
from controlplane.sim.simgpu import GpuSpec, SimGpu

log = logging.getLogger(__name__)

CRASH_DELAY_S = 0.05
"""A crash happens this long after answering the control request that asked for it."""


@dataclass(frozen=True, slots=True)
class FakeLLMConfig:
    """How one fake server starts. Knobs marked *runtime* may change via ``/control``."""

    models: tuple[str, ...]
    """Served model names; the first is the default and labels the metrics."""
    replica_id: str = ""
    """Sent as the ``x-replica`` header of every response; must be set for ``FakeLLM``
    (``FakeLLMServer`` fills in ``host:port`` when empty)."""
    version: str = "default"
    """Reported as ``aixds_version`` in ``/v1/models`` (*runtime*)."""
    max_running: int = 8
    """Sequences decoded at once (*runtime*)."""
    max_queue: int = 1000
    """Waiting requests beyond which it answers 503 (*runtime*)."""
    ttft_ms: float = 30.0
    """Fixed part of the time to first token, at speed 1 (*runtime*)."""
    tpot_ms: float = 10.0
    """Time per output token of a batch of one, at speed 1 (*runtime*)."""
    prefill_tps: float = 20000.0
    """Prefill throughput, prompt tokens per second at speed 1; 0 = free (*runtime*)."""
    batch_slowdown: float = 0.02
    """Decode step = ``tpot_ms * (1 + batch_slowdown * (batch - 1))`` (*runtime*)."""
    external_load: float = 0.0
    """GPU share taken by a noisy neighbour, 0..0.95 (*runtime*)."""
    speed: float = 1.0
    """Throughput factor; 2.0 = twice as fast (*runtime*)."""
    default_tokens: int = 16
    """Output length when a request has no ``max_tokens``."""
    kv_capacity_tokens: int = 65536
    """KV-cache size in tokens (*runtime*)."""
    prefix_caching: bool = True
    """Automatic prefix caching, as vLLM's ``--enable-prefix-caching`` (*runtime*)."""
    block_size: int = BLOCK_SIZE
    """Tokens per KV block: the prefix cache's unit (vLLM's ``--block-size``)."""
    max_model_len: int = 32768
    """Largest prompt + output a request may ask for (400 beyond)."""
    error_rate: float = 0.0
    """Fraction of requests answered 500 (*runtime*)."""
    load_time_s: float = 0.0
    """Simulated cold start: health 503 and no models listed for this long."""
    seed: int | None = None
    """Seed of the fault-injection random source (None: unpredictable)."""
    runtime_lora: bool = False
    """Serve vLLM's runtime LoRA API, as vLLM does with
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; off, those routes answer 404 (as in vLLM)."""
    lora_load_ms: float = 500.0
    """How long loading a LoRA adapter takes (*runtime*)."""
    gpu: GpuSpec = field(default_factory=GpuSpec)
    """The simulated GPU board (memory, the base model's weights, power limit)."""
    available: tuple[AvailableSpec, ...] = ()
    """Models it can load on demand through the LoRA API (``--available``)."""
    load_time_ms: float = DEFAULT_LOAD_MS
    """Load time of an available model without its own (*runtime*)."""
    sleep_mode: bool = False
    """Serve vLLM's sleep API (``--enable-sleep-mode``)."""
    wake_ms: float = DEFAULT_WAKE_MS
    """How long a wake from level-1 sleep takes (*runtime*)."""


class FakeLLM:
    """One simulated model server: engine, metrics, fault switches, and its ASGI app.

    ``on_crash`` is what ``{"crash": true}`` does (the CLI exits the process; an
    in-process server stops hard); without it, that switch is refused.
    """

    def __init__(self, config: FakeLLMConfig, on_crash: Callable[[], None] | None = None) -> None:
        if not config.models:
            raise ValueError("a fake server needs at least one model name")
        if not config.replica_id:
            raise ValueError("a fake server needs a replica_id (its x-replica header)")
        self.config = config
        self.knobs = Knobs(
            max_running=config.max_running,
            max_queue=config.max_queue,
            ttft_ms=config.ttft_ms,
            tpot_ms=config.tpot_ms,
            speed=config.speed,
            kv_capacity_tokens=config.kv_capacity_tokens,
            prefill_tps=config.prefill_tps,
            batch_slowdown=config.batch_slowdown,
            external_load=config.external_load,
            prefix_caching=config.prefix_caching,
        )
        self.metrics = ServerMetrics(config.models[0])
        self.engine = Engine(
            self.knobs, on_finish=self.metrics.on_finish, block_size=config.block_size
        )
        self.metrics.watch(self.engine)
        self.residency = Residency(
            config.gpu.mem_total_bytes,
            config.gpu.weights_bytes,
            config.available,
            config.load_time_ms,
            config.wake_ms,
            config.load_time_s * 1000.0,
        )
        self.gpu = SimGpu(
            self.engine, self.knobs, config.replica_id, config.gpu, memory=self._memory
        )
        self.on_crash = on_crash
        self._unstall: asyncio.TimerHandle | None = None
        self.error_rate = config.error_rate
        self.version = config.version
        self._ready_at = time.monotonic() + config.load_time_s
        self._rng = random.Random(config.seed)
        self._created = int(time.time())
        self._models = frozenset(config.models)
        self.lora = LoraAdapters(config.lora_load_ms, weights=self.residency)
        self._sleep_lock = asyncio.Lock()
        self._quiescing = False
        """A ``/sleep?mode=wait`` waits for the requests in flight: new ones are refused."""
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._list_models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/control", self._control, methods=["GET", "POST"]),
            Route("/sim/gpu", self._sim_gpu, methods=["GET"]),
            Route("/sim/available", self._sim_available, methods=["GET"]),
        ]
        if config.runtime_lora or config.available:
            routes += [
                Route("/v1/load_lora_adapter", self._load_lora, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self._unload_lora, methods=["POST"]),
            ]
        if config.sleep_mode:
            routes += [
                Route("/sleep", self._sleep, methods=["POST"]),
                Route("/wake_up", self._wake_up, methods=["POST"]),
                Route("/is_sleeping", self._is_sleeping, methods=["GET"]),
            ]
        self.app: ASGIApp = _ReplicaHeader(Starlette(routes=routes), config.replica_id)

    @property
    def loading(self) -> bool:
        return time.monotonic() < self._ready_at

    def _memory(self) -> tuple[int, bool]:
        """Weights on the GPU, and whether the KV cache is there (for ``SimGpu``)."""
        return self.residency.weights_bytes, "kv_cache" not in self.residency.asleep

    def state(self) -> dict[str, Any]:
        """The current switches and load, as ``GET /control`` shows them."""
        k = self.knobs
        return {
            "replica_id": self.config.replica_id,
            "models": list(self.config.models),
            "version": self.version,
            "loading": self.loading,
            "error_rate": self.error_rate,
            "speed": k.speed,
            "stall": k.stall,
            "max_running": k.max_running,
            "max_queue": k.max_queue,
            "ttft_ms": k.ttft_ms,
            "tpot_ms": k.tpot_ms,
            "kv_capacity_tokens": k.kv_capacity_tokens,
            "prefill_tps": k.prefill_tps,
            "batch_slowdown": k.batch_slowdown,
            "external_load": k.external_load,
            "gpu_throttle": k.gpu_throttle,
            "prefix_caching": k.prefix_caching,
            "block_size": self.engine.cache.block_size,
            "cached_blocks": self.engine.cache.cached,
            "gpu_fault": self.gpu.last_fault,
            "runtime_lora": self.config.runtime_lora,
            "lora_adapters": {a.name: a.path for a in self.lora.loaded.values()},
            "lora_in_progress": self.lora.in_progress,
            "lora_load_ms": self.lora.load_ms,
            "lora_fail_loads": self.lora.fail_loads,
            "lora_load_calls": self.lora.load_calls,
            "lora_unload_calls": self.lora.unload_calls,
            "available": [a.name for a in self.config.available],
            "load_time_ms": self.residency.default_load_ms,
            "sleep_mode": self.config.sleep_mode,
            "sleeping": self.residency.sleeping,
            "sleep_level": self.residency.level,
            "wake_ms": self.residency.wake_ms,
            "weights_bytes": self.residency.weights_bytes,
            "effective_speed": k.effective_speed(),
            "running": self.engine.running,
            "waiting": self.engine.waiting,
            "kv_cache_usage": self.engine.kv_usage,
            "busy_fraction": self.engine.busy_fraction,
        }

    def apply(self, changes: dict[str, Any]) -> None:
        """Apply checked changes (see ``control.parse_control``); call from the loop."""
        for name, value in changes.items():
            if name == "error_rate":
                self.error_rate = value
            elif name == "version":
                self.version = value
            elif name == "load_time":
                self._ready_at = time.monotonic() + value
                if value > 0:
                    self.engine.abort_all()
                    self.lora.forget_all()  # a restarted vLLM has lost its adapters
                    self.residency.wake(TAGS)  # and is awake
            elif name == "lora_load_ms":
                self.lora.load_ms = value
            elif name == "lora_fail_loads":
                self.lora.fail_loads = value
            elif name == "load_time_ms":
                self.residency.default_load_ms = value
            elif name == "wake_ms":
                self.residency.wake_ms = value
            elif name == "gpu_fault":
                self.gpu.inject(value)
            elif name == "crash":
                if value and self.on_crash is not None:
                    log.warning("%s: crash requested through /control", self.config.replica_id)
                    asyncio.get_running_loop().call_later(CRASH_DELAY_S, self.on_crash)
            elif name in ("stall", "stall_for"):
                if self._unstall is not None:
                    self._unstall.cancel()
                    self._unstall = None
                self.knobs.stall = value if name == "stall" else True
                if name == "stall_for":
                    self._unstall = asyncio.get_running_loop().call_later(value, self._resume)
            else:
                setattr(self.knobs, name, value)
        self.engine.poke()

    def _resume(self) -> None:
        self._unstall = None
        self.knobs.stall = False
        self.engine.poke()

    def close(self) -> None:
        if self._unstall is not None:
            self._unstall.cancel()
            self._unstall = None
        self.engine.close()

    # -- endpoints ----------------------------------------------------------------------
    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response:
        if self.loading:
            self.metrics.rejected.labels("loading").inc()
            return _error(503, "the model is still loading", "ServiceUnavailableError")
        if self.residency.sleeping or self._quiescing:
            self.metrics.rejected.labels("sleeping").inc()
            return _error(
                503,
                "The model is sleeping (vLLM sleep mode): POST /wake_up first",
                "ServiceUnavailableError",
            )
        try:
            req = fmt.parse_request(
                await request.body(),
                chat=chat,
                default_tokens=self.config.default_tokens,
                max_model_len=self.config.max_model_len,
            )
        except fmt.BadRequest as e:
            return _error(400, str(e), "BadRequestError")
        model = req.model or self.config.models[0]
        if model not in self._models and model not in self.lora.loaded:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            self.metrics.rejected.labels("injected_error").inc()
            return _error(500, "injected fault (--error-rate)", "InternalServerError")
        # A LoRA adapter's KV differs from the base model's: its own hash chain.
        salt = "" if model in self._models else model
        try:
            seq = self.engine.submit(
                req.prompt_tokens, req.max_tokens, self.engine.block_hashes(req.prompt, salt)
            )
        except Overloaded as e:
            self.metrics.rejected.labels("overloaded").inc()
            return _error(503, f"server overloaded: {e}", "ServiceUnavailableError")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            return StreamingResponse(
                self._stream(seq, req, rid, model, created), media_type="text/event-stream"
            )
        try:
            await _finished_or_gone(seq, request.receive)
        finally:
            self.engine.abort(seq)  # no-op when it finished; frees the slot when not
        if seq.finish is not Finish.LENGTH:
            return _error(503, "request aborted: the model is reloading", "ServiceUnavailableError")
        body = fmt.completion_body(
            req, rid, model, created, seq.generated, "length", seq.cached_tokens
        )
        return JSONResponse(body)

    async def _stream(
        self, seq: Seq, req: fmt.GenRequest, rid: str, model: str, created: int
    ) -> AsyncIterator[bytes]:
        w = fmt.ChunkWriter(req, rid, model, created)
        sent = 0
        try:
            while True:
                n = await seq.wait_beyond(sent)
                if seq.finish is Finish.ABORT:
                    return  # the connection just ends, as when a real server restarts
                out = [w.role()] if sent == 0 and req.chat else []
                out += [
                    w.token(req.first + i, "length" if i + 1 == req.max_tokens else None)
                    for i in range(sent, n)
                ]
                sent = n
                if seq.done:
                    if req.include_usage:
                        out.append(w.usage(sent, seq.cached_tokens))
                    out.append(fmt.DONE)
                    yield b"".join(out)
                    return
                yield b"".join(out)
        finally:
            self.engine.abort(seq)

    async def _list_models(self, request: Request) -> Response:
        data: list[dict[str, Any]] = (
            []
            if self.loading
            else [
                {
                    "id": m,
                    "object": "model",
                    "created": self._created,
                    "owned_by": "vllm",
                    "root": m,
                    "parent": None,
                    "max_model_len": self.config.max_model_len,
                    "permission": [],
                    "aixds_version": self.version,
                }
                for m in self.config.models
            ]
            + [
                {
                    "id": a.name,
                    "object": "model",
                    "created": a.created,
                    "owned_by": "vllm",
                    "root": a.path,
                    "parent": None if a.name in self.residency.available else self.config.models[0],
                    "max_model_len": None,
                    "permission": [],
                    "aixds_version": self.version,
                }
                for a in self.lora.loaded.values()
            ]
        )
        return JSONResponse({"object": "list", "data": data})

    async def _load_lora(self, request: Request) -> Response:
        return await self._lora_call(request, load=True)

    async def _unload_lora(self, request: Request) -> Response:
        return await self._lora_call(request, load=False)

    async def _lora_call(self, request: Request, *, load: bool) -> Response:
        if self.loading:
            return _lora_error(503, "the model is still loading", "ServiceUnavailableError")
        fields = ("lora_name", "lora_path") if load else ("lora_name",)
        try:
            body = fmt.parse_lora_request(await request.body(), fields)
        except fmt.BadRequest as e:
            return _lora_error(400, str(e), "BadRequestError")
        name = body["lora_name"]
        if load and self.residency.sleeping:
            msg = f"cannot load '{name}' while the server sleeps: POST /wake_up first"
            return _lora_error(503, msg, "ServiceUnavailableError")
        try:
            if load:
                await self.lora.load(name, body["lora_path"])
            else:
                await self.lora.unload(name)
        except LoraRefused as e:
            log.info("%s: %s", self.config.replica_id, e.message)
            return _lora_error(e.status, e.message, e.kind)
        done = "added" if load else "removed"
        log.info("%s: LoRA adapter %r %s", self.config.replica_id, name, done)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' {done} successfully.")

    async def _health(self, request: Request) -> Response:
        return Response(status_code=503 if self.loading else 200)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def _control(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = parse_control(json.loads(await request.body()))
            except ValueError as e:  # ControlError and JSONDecodeError
                kind = "BadRequestError"
                msg = str(e) if isinstance(e, ControlError) else f"body is not JSON: {e}"
                return _error(400, msg, kind)
            if changes.get("crash") and self.on_crash is None:
                return _error(400, "'crash' needs a server process to crash", "BadRequestError")
            self.apply(changes)
        return JSONResponse(self.state())

    async def _sim_gpu(self, request: Request) -> Response:
        return JSONResponse(self.gpu.document())

    async def _sim_available(self, request: Request) -> Response:
        r = self.residency
        # the version each would serve, so that placement asks for it by the version it
        # will have (a model published under another version while loading would get a
        # new cluster at the moment it turns ready, which Envoy's LRS misses for a period)
        listing = [{**m, "version": self.version} for m in r.listing(self.lora.loaded)]
        if self.config.sleep_mode:
            # A server that can sleep offers its base model to placement too: it is put to
            # sleep and woken (never unloaded: vLLM cannot drop its base model at runtime).
            base = self.config.models[0]
            listing.insert(
                0,
                {
                    "name": base,
                    "version": self.version,
                    "mem_bytes": r.base_bytes,
                    "load_s": r.base_load_ms / 1000.0,
                    "wake_s": r.wake_ms / 1000.0,
                    "loaded": True,
                    "loading": False,
                },
            )
        return JSONResponse(
            {
                "models": listing,
                "gpu_mem_bytes": r.total_bytes,
                "free_bytes": r.free_bytes,
                "sleeping": r.sleeping,
            }
        )

    async def _sleep(self, request: Request) -> Response:
        level_s = request.query_params.get("level", "1")
        mode = request.query_params.get("mode", "abort")
        if level_s not in ("1", "2") or mode not in ("abort", "wait"):
            msg = f"level must be 1 or 2 and mode abort or wait, got {level_s!r}, {mode!r}"
            return _error(400, msg, "BadRequestError")
        async with self._sleep_lock:
            if mode == "wait":
                self._quiescing = True
                try:
                    # The engine has no "idle" event; a 10 ms poll is cheap and rare.
                    while self.engine.running or self.engine.waiting:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                finally:
                    self._quiescing = False
            else:
                self.engine.abort_all()
            self.engine.cache.evict(0)  # vLLM resets the prefix cache before sleeping
            self.residency.sleep(int(level_s))
        log.info("%s: asleep (level %s)", self.config.replica_id, level_s)
        return Response(status_code=200)

    async def _wake_up(self, request: Request) -> Response:
        try:
            tags = parse_tags(request.query_params.getlist("tags"))
        except ValueError as e:
            return _error(400, str(e), "BadRequestError")
        async with self._sleep_lock:
            await asyncio.sleep(self.residency.wake_ms_for(tags) / 1000.0)
            self.residency.wake(tags)
        log.info("%s: woke %s", self.config.replica_id, ",".join(tags))
        return Response(status_code=200)

    async def _is_sleeping(self, request: Request) -> Response:
        return JSONResponse({"is_sleeping": self.residency.sleeping})


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse(fmt.error_body(message, type_, status), status_code=status)


def _lora_error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse(fmt.lora_error_body(message, type_, status), status_code=status)


async def _finished_or_gone(seq: Seq, receive: Receive) -> None:
    """Wait until the sequence ends or the client hangs up (then vLLM aborts it too)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    done = asyncio.ensure_future(seq.wait_done())
    hangup = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((done, hangup), return_when=asyncio.FIRST_COMPLETED)
    finally:
        done.cancel()
        hangup.cancel()


class _ReplicaHeader:
    """ASGI middleware: add ``x-replica`` to every HTTP response, errors included."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self._app = app
        self._header = (b"x-replica", replica_id.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header]
            await send(message)

        await self._app(scope, receive, send_with_header)
