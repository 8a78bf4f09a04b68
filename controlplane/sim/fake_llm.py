"""``aixds fake-llm``: a fake vLLM server on a real socket, from the CLI or in-process.

``configure_parser`` / ``run`` are the CLI command (``run`` blocks until SIGINT/SIGTERM,
then returns 0; ``{"crash": true}`` on ``/control`` ends the process at once with status
``CRASH_EXIT_CODE``). ``FakeLLMServer`` serves a ``FakeLLM`` in the caller's event loop,
for tests: ``async with FakeLLMServer(FakeLLMConfig(models=("m",))) as srv: srv.url``;
there a crash stops the server hard (connections cut, port closed). ``--runtime-lora`` (or
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, as for vLLM) adds vLLM's runtime LoRA API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import TracebackType

import uvicorn

from controlplane.embedded_http import EmbeddedServer
from controlplane.sim.app import FakeLLM, FakeLLMConfig
from controlplane.sim.residency import parse_available
from controlplane.sim.simgpu import GiB, GpuSpec

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 70
"""Exit status of ``aixds fake-llm`` after ``{"crash": true}`` (EX_SOFTWARE)."""
LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
"""vLLM's switch for the runtime LoRA API; ``1`` or ``true`` turns it on here too."""

EXAMPLES = """\
examples:
  aixds fake-llm --listen 127.0.0.1:8001 --model llama-3-8b --version v1
  aixds fake-llm --listen 127.0.0.1:8002 --model llama-3-8b --max-running 4 --speed 0.5
  aixds fake-llm --listen 127.0.0.1:8003 --model qwen --error-rate 0.1 --load-time 5
  aixds fake-llm --listen 127.0.0.1:8004 --model llama-3-8b --speed 0.6 --noisy-neighbor 0.2 \
      --kv-capacity-tokens 20000 --prefill-tps 8000 --batch-slowdown 0.05
  aixds fake-llm --listen 127.0.0.1:8005 --model llama-3-8b --runtime-lora --lora-load-ms 2000
  aixds fake-llm --listen 127.0.0.1:8006 --model llama-3-8b --no-enable-prefix-caching
  aixds fake-llm --listen 127.0.0.1:8007 --model llama-3-8b --weights-gib 16 --gpu-mem-gib 80 \
      --available qwen-7b:15:8000,mistral-7b:14,phi-3 --load-time-ms 20000 \
      --enable-sleep-mode --wake-ms 500

runtime control (no restart):
  curl -XPOST localhost:8001/control -d '{"error_rate": 0.3, "speed": 0.5, "stall": true}'
  curl -XPOST localhost:8001/control -d '{"external_load": 0.3, "gpu_throttle": true}'
  curl -XPOST localhost:8001/control -d '{"gpu_fault": "xid 79"}'   # or "ecc", "remap", "lost"
  curl -XPOST localhost:8001/control -d '{"prefix_caching": false}'
  curl -XPOST localhost:8001/control -d '{"crash": true}'           # exits with status 70
  curl localhost:8001/sim/gpu                                       # the simulated GPU

runtime LoRA adapters (with --runtime-lora):
  curl -XPOST localhost:8005/v1/load_lora_adapter \
      -d '{"lora_name": "sql-lora", "lora_path": "/adapters/sql"}'
  curl -XPOST localhost:8005/v1/unload_lora_adapter -d '{"lora_name": "sql-lora"}'
  curl -XPOST localhost:8005/control -d '{"lora_fail_loads": 2, "lora_load_ms": 100}'

models on demand and sleep mode (with --available, --enable-sleep-mode):
  curl localhost:8007/sim/available                 # what it can load: memory, load/wake s
  curl -XPOST localhost:8007/v1/load_lora_adapter \
      -d '{"lora_name": "qwen-7b", "lora_path": "qwen-7b"}'   # 8 s; refused if no room
  curl -XPOST 'localhost:8007/sleep?level=1'        # weights to CPU; inference answers 503
  curl localhost:8007/is_sleeping
  curl -XPOST localhost:8007/wake_up                # 0.5 s (level 2: the load times)
  curl -XPOST localhost:8007/control -d '{"load_time_ms": 5000, "wake_ms": 300}'
"""


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class FakeLLMServer:
    """One ``FakeLLM`` served by uvicorn on its own socket, in the running event loop.

    ``config.replica_id`` may be empty: it then becomes ``host:port`` once bound (useful
    with port 0). Stop it with ``stop()`` or by leaving ``async with``. ``on_crash`` is
    what ``{"crash": true}`` does; by default the server stops hard (``crashed`` is set).
    """

    def __init__(
        self,
        config: FakeLLMConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self.host = host
        self.port = port
        self._on_crash = on_crash
        self.crashed = False
        self.llm: FakeLLM | None = None
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._sock = _bind(self.host, self.port)
        self.port = int(self._sock.getsockname()[1])
        config = self._config
        if not config.replica_id:
            config = replace(config, replica_id=f"{self.host}:{self.port}")
        self.llm = FakeLLM(config, on_crash=self._on_crash or self._crash)
        uv = uvicorn.Config(
            self.llm.app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = EmbeddedServer(uv)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._sock]), name=f"fake-llm {config.replica_id}"
        )
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("fake-llm server exited during startup")
            await asyncio.sleep(0.005)

    async def wait(self) -> None:
        """Until the server stops by itself (it normally does not)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def _crash(self) -> None:
        """Stop at once: in-flight requests cut, the port closed, no graceful shutdown."""
        self.crashed = True
        if self.llm is not None:
            self.llm.close()
        if self._server is not None:
            self._server.force_exit = True
            self._server.should_exit = True

    async def stop(self) -> None:
        if self.llm is not None:
            self.llm.close()  # abort in-flight requests, as a real server's restart does
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
        self._server = self._task = self._sock = None

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener's proto says TCP; without it every response waits ~40 ms on delayed ACKs.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


# -- CLI ----------------------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _non_negative_float(s: str) -> float:
    v = float(s)
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def _neighbour_share(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 0.95:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.95], got {s}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add ``aixds fake-llm``'s flags to ``p``."""
    d = FakeLLMConfig(models=("m",))
    if p.epilog is None:
        p.epilog = EXAMPLES
        p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address to bind (only this one); port 0 picks a free port",
    )
    p.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="NAME",
        help="served model name; repeat to serve aliases (the first labels metrics)",
    )
    p.add_argument(
        "--version",
        default=d.version,
        help="model version reported as aixds_version in /v1/models (default: %(default)s)",
    )
    p.add_argument(
        "--replica-id",
        default="",
        help="value of the x-replica response header (default: HOST:PORT)",
    )
    cap = p.add_argument_group("capacity")
    cap.add_argument(
        "--max-running",
        type=_positive_int,
        default=d.max_running,
        help="sequences decoded at once (%(default)s)",
    )
    cap.add_argument(
        "--max-queue",
        type=_non_negative_int,
        default=d.max_queue,
        help="waiting requests beyond which it answers 503 (%(default)s)",
    )
    cap.add_argument(
        "--ttft-ms",
        type=_non_negative_float,
        default=d.ttft_ms,
        help="fixed part of the time to first token, at speed 1 (%(default)s)",
    )
    cap.add_argument(
        "--tpot-ms",
        type=_positive_float,
        default=d.tpot_ms,
        help="time per output token of a batch of one, at speed 1 (%(default)s)",
    )
    cap.add_argument(
        "--speed",
        type=_positive_float,
        default=d.speed,
        help="throughput factor, 2.0 = twice as fast (%(default)s)",
    )
    cap.add_argument(
        "--default-tokens",
        type=_positive_int,
        default=d.default_tokens,
        help="output tokens when a request sets no max_tokens (%(default)s)",
    )
    cap.add_argument(
        "--kv-capacity-tokens",
        type=_positive_int,
        default=d.kv_capacity_tokens,
        help="KV-cache size in tokens (%(default)s)",
    )
    cap.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=d.prefix_caching,
        help="automatic prefix caching, as vLLM's (on by default, as in vLLM V1): prompt "
        "blocks already cached skip prefill",
    )
    cap.add_argument(
        "--block-size",
        type=_positive_int,
        default=d.block_size,
        metavar="TOKENS",
        help="tokens per KV block, the prefix cache's unit (%(default)s)",
    )
    cap.add_argument(
        "--max-model-len",
        type=_positive_int,
        default=d.max_model_len,
        help="largest prompt + output per request (%(default)s)",
    )
    cap.add_argument(
        "--prefill-tps",
        type=_non_negative_float,
        default=d.prefill_tps,
        metavar="TOKENS",
        help="prefill tokens per second at speed 1; 0 = free (%(default)s)",
    )
    cap.add_argument(
        "--batch-slowdown",
        type=_non_negative_float,
        default=d.batch_slowdown,
        metavar="ALPHA",
        help="decode step = tpot * (1 + ALPHA * (batch - 1)) (%(default)s)",
    )
    cap.add_argument(
        "--noisy-neighbor",
        type=_neighbour_share,
        default=d.external_load,
        metavar="F",
        help="share of the GPU another tenant takes, 0..0.95: all work is 1/(1-F) slower",
    )
    gpu = p.add_argument_group("simulated GPU (GET /sim/gpu)")
    gpu.add_argument(
        "--gpu-mem-gib",
        type=_positive_float,
        default=d.gpu.mem_total_bytes / GiB,
        help="GPU memory, GiB (%(default)s)",
    )
    gpu.add_argument(
        "--weights-gib",
        type=_non_negative_float,
        default=d.gpu.weights_bytes / GiB,
        help="the base model's weights on the GPU, GiB (%(default)s)",
    )
    gpu.add_argument(
        "--gpu-uuid",
        default="",
        metavar="UUID",
        help="the GPU's uuid (default: derived from --replica-id); servers given the same one "
        "share that GPU's memory in placement's eyes (e.g. one vLLM per model on one GPU)",
    )
    gpu.add_argument(
        "--gpu-power-w",
        type=_positive_float,
        default=d.gpu.power_limit_w,
        help="GPU power limit, W (%(default)s)",
    )
    lora = p.add_argument_group("runtime LoRA adapters")
    lora.add_argument(
        "--runtime-lora",
        action="store_true",
        help="serve /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM does with "
        f"{LORA_ENV}=True (that variable turns it on too)",
    )
    lora.add_argument(
        "--lora-load-ms",
        type=_non_negative_float,
        default=d.lora_load_ms,
        metavar="MS",
        help="how long loading an adapter takes (%(default)s)",
    )
    demand = p.add_argument_group("models on demand and sleep mode")
    demand.add_argument(
        "--available",
        type=parse_available,
        default=(),
        metavar="NAME[:GIB[:MS]][,...]",
        help="models it can load on demand through the LoRA API (which this turns on), each "
        "with its GPU memory in GiB (default: --weights-gib) and load time in ms (default: "
        "--load-time-ms); a load that does not fit the free GPU memory is refused",
    )
    demand.add_argument(
        "--load-time-ms",
        type=_non_negative_float,
        default=d.load_time_ms,
        metavar="MS",
        help="load time of an --available model without its own (%(default)s)",
    )
    demand.add_argument(
        "--enable-sleep-mode",
        action="store_true",
        help="serve vLLM's POST /sleep?level=1|2, POST /wake_up and GET /is_sleeping",
    )
    demand.add_argument(
        "--wake-ms",
        type=_non_negative_float,
        default=d.wake_ms,
        metavar="MS",
        help="wake time from level-1 sleep (%(default)s); level 2 reloads: plus the load times",
    )
    faults = p.add_argument_group("faults")
    faults.add_argument(
        "--error-rate",
        type=_fraction,
        default=d.error_rate,
        help="fraction of requests answered 500 (%(default)s)",
    )
    faults.add_argument(
        "--load-time",
        type=_non_negative_float,
        default=d.load_time_s,
        metavar="S",
        help="simulated cold start: health 503 for S seconds",
    )
    faults.add_argument(
        "--seed", type=int, default=None, help="seed of the fault-injection random source"
    )


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> tuple[FakeLLMConfig, str, int]:
    """The server config and the address to bind; raises ``ValueError`` on a bad --listen."""
    host, port = parse_listen(args.listen)
    if args.weights_gib >= args.gpu_mem_gib:
        raise ValueError(f"--weights-gib ({args.weights_gib}) must be below --gpu-mem-gib")
    clash = sorted(set(args.model) & {a.name for a in args.available})
    if clash:
        raise ValueError(f"--available names a served --model: {clash}")
    config = FakeLLMConfig(
        models=tuple(dict.fromkeys(args.model)),
        replica_id=args.replica_id,
        version=args.version,
        max_running=args.max_running,
        max_queue=args.max_queue,
        ttft_ms=args.ttft_ms,
        tpot_ms=args.tpot_ms,
        speed=args.speed,
        default_tokens=args.default_tokens,
        kv_capacity_tokens=args.kv_capacity_tokens,
        prefix_caching=args.enable_prefix_caching,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        error_rate=args.error_rate,
        load_time_s=args.load_time,
        seed=args.seed,
        prefill_tps=args.prefill_tps,
        batch_slowdown=args.batch_slowdown,
        external_load=args.noisy_neighbor,
        runtime_lora=args.runtime_lora
        or environ.get(LORA_ENV, "0").strip().lower() in ("1", "true"),
        lora_load_ms=args.lora_load_ms,
        available=args.available,
        load_time_ms=args.load_time_ms,
        sleep_mode=args.enable_sleep_mode,
        wake_ms=args.wake_ms,
        gpu=GpuSpec(
            mem_total_bytes=int(args.gpu_mem_gib * GiB),
            weights_bytes=int(args.weights_gib * GiB),
            power_limit_w=args.gpu_power_w,
            uuid=args.gpu_uuid,
        ),
    )
    return config, host, port


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 then, 2 for bad arguments, 1 if it cannot bind."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config, host, port = config_from_args(args)
    except ValueError as e:
        print(f"aixds fake-llm: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(FakeLLMServer(config, host, port, on_crash=_exit_hard)))


def _exit_hard() -> None:
    """``{"crash": true}``: end the process now, as a segfault or OOM kill would."""
    log.warning("crashing on request (exit status %d)", CRASH_EXIT_CODE)
    logging.shutdown()
    os._exit(CRASH_EXIT_CODE)


async def _serve(server: FakeLLMServer) -> int:
    try:
        await server.start()
    except OSError as e:
        print(f"aixds fake-llm: cannot listen on {server.host}:{server.port}: {e}", file=sys.stderr)
        return 1
    assert server.llm is not None
    log.info(
        "fake-llm %s serving %s on %s",
        server.llm.config.replica_id,
        ",".join(server.llm.config.models),
        server.url,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait(), name="fake-llm signal")
    ended = asyncio.create_task(server.wait(), name="fake-llm serve")
    try:
        await asyncio.wait((stopped, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await server.stop()
        ended.cancel()
    log.info("fake-llm stopped")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="aixds fake-llm", description=__doc__)
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))
