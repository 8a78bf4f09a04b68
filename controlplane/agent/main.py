"""``aixds agent``: flags -> ``AgentConfig`` -> ``node.run_node``; run until a signal.

``configure_parser`` / ``run`` are the CLI command; ``run_agent`` is the same thing for a
caller that owns the event loop and the stop event (tests). Exit codes: 0 after SIGINT or
SIGTERM, 1 if a loop died, 2 for bad flags, 3 if another agent serves this node.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

import redis.asyncio as aioredis

from controlplane.agent.config import AgentConfig
from controlplane.agent.gpus.selection import parse_server_gpus
from controlplane.agent.gpus.source import GpuSource
from controlplane.agent.gpus.wiring import GPU_SOURCES, NodeGpus
from controlplane.agent.host_memory import host_memory_bytes
from controlplane.agent.lock import LockHeld, lock_key
from controlplane.agent.node import EXIT_LOCK, GpuProvider, SharedGpu, run_node
from controlplane.agent.placement.converge import ExecTiming
from controlplane.agent.publisher import Timing
from controlplane.agent.servers.discovery import (
    WILDCARDS,
    ServerSpec,
    check_unique,
    load_config,
    parse_server,
    resolve_sync,
)
from controlplane.agent.servers.docker_source import DockerSource, connect, node_address
from controlplane.agent.servers.ondemand import parse_configured
from controlplane.agent.servers.speed import REFERENCE_TPS
from controlplane.fleet import redis_url, registry
from controlplane.fleet.store import RegistryWriter

__all__ = [
    "AgentConfig",
    "ServerSpec",
    "config_from_args",
    "configure_parser",
    "parse_server",
    "run",
    "run_agent",
]

log = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  aixds agent --redis redis://127.0.0.1:6379/0 --node gpu-a1 --region eu --zone eu-1 \\
      --server vllm=http://127.0.0.1:8001
  aixds agent --redis redis://redis:6379/0 --node gpu-b7 --region us --zone us-2 \\
      --server vllm=http://127.0.0.1:8001 --server triton=http://127.0.0.1:8100 \\
      --model-version llama-3-8b=v2 --advertise 10.0.3.7
  aixds agent --redis redis://redis:6379/0 --node gpu-c2 --region us --zone us-1 \\
      --config /etc/aixds/agent.yaml --docker
  aixds agent --redis redis://127.0.0.1:6379/0 --node gpu-d4 --region eu --zone eu-1 \\
      --server vllm=http://127.0.0.1:8000 --available vllm-8000=qwen-7b:15:40,phi-3:8

Each server becomes one replica, id NODE/KIND-PORT (or NODE/NAME), published to Redis
every --interval seconds and at once when its models or load change. Kinds: vllm,
sglang, tgi, triton, trtllm, ollama. The agent also loads and unloads models as the
node's desired-models key asks (vllm LoRA, triton, ollama), and puts servers to sleep and
wakes them (vllm, sglang) when every model it manages on one is desired "sleeping". One
agent per node: a second exits with code 3 unless --takeover. See the README, section
"The node agent".
"""


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k or not val:
            raise ValueError(f"{flag} expects MODEL=VERSION, got {v!r}")
        out[k] = val
    return out


def _resolved(spec: ServerSpec, advertise: str | None) -> ServerSpec:
    """A flag's server with its address (``--advertise`` is applied by discovery)."""
    if advertise:
        return spec
    if spec.host in WILDCARDS:
        raise ValueError(f"{spec.url} is a wildcard address: give --advertise HOST")
    try:
        return replace(spec, address=resolve_sync(spec.host))
    except ValueError as e:
        raise ValueError(f"--server {spec.url}: {e}") from None


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Check the flags together; ``ValueError`` says what is wrong."""
    for flag, v in (("--node", args.node), ("--region", args.region)):
        if not v or "/" in v:
            raise ValueError(f"{flag} must be non-empty and contain no '/', got {v!r}")
    servers = tuple(parse_server(s) for s in args.server or [])
    config_path = Path(args.config) if args.config else None
    if not (servers or config_path or args.docker):
        raise ValueError("no model servers: give --server KIND=URL, --config FILE or --docker")
    if args.gpu not in GPU_SOURCES:
        raise ValueError(f"--gpu must be one of {', '.join(GPU_SOURCES)}")
    positive = {
        "--interval": args.interval,
        "--poll-interval": args.poll_interval,
        "--discover-interval": args.discover_interval,
        "--lock-ttl": args.lock_ttl,
        "--load-timeout": args.load_timeout,
        "--reference-tps": args.reference_tps,
    }
    for flag, v in positive.items():
        if not v > 0:
            raise ValueError(f"{flag} must be positive, got {v}")
    if args.ttl <= args.interval:
        raise ValueError(f"--ttl ({args.ttl}) must exceed --interval ({args.interval})")
    if args.warmup < 0 or args.drain < 0 or args.wake_warmup < 0 or args.lost_hold < 0:
        raise ValueError("--warmup, --drain, --wake-warmup and --lost-hold must not be negative")
    available = dict(parse_configured(v) for v in args.available or [])
    check_unique(servers)
    advertise = None
    if args.advertise:
        if args.advertise in WILDCARDS:
            raise ValueError("--advertise must be an address Envoy can reach, not a wildcard")
        try:
            advertise = resolve_sync(args.advertise)
        except ValueError as e:
            raise ValueError(f"--advertise: {e}") from None
    servers = tuple(_resolved(s, advertise) for s in servers)
    if config_path is not None:
        load_config(config_path)  # fail now on a bad file; it is read again at each scan
    return AgentConfig(
        redis_url=args.redis,
        node=args.node,
        region=args.region,
        zone=args.zone,
        servers=servers,
        gpu=args.gpu,
        reference_tps=args.reference_tps,
        timing=Timing(
            interval_s=args.interval,
            ttl_s=args.ttl,
            poll_interval_s=args.poll_interval,
            lost_hold_s=args.lost_hold,
        ),
        versions=_pairs(args.model_version, "--model-version"),
        advertise=advertise,
        config_path=config_path,
        docker=args.docker,
        docker_url=args.docker_url,
        discover_interval_s=args.discover_interval,
        takeover=args.takeover,
        lock_ttl_s=args.lock_ttl,
        exec_timing=ExecTiming(
            sync_s=min(1.0, args.interval),
            warmup_s=args.warmup,
            drain_s=args.drain,
            call_timeout_s=args.load_timeout,
            wake_warmup_s=args.wake_warmup,
        ),
        host_mem_bytes=host_memory_bytes(args.host_memory, args.gpu),
        available=available,
    )


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add ``aixds agent``'s flags to ``p``."""
    if p.epilog is None:
        p.epilog = EXAMPLES
        p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "--redis",
        required=True,
        metavar="URL",
        type=redis_url.argument,
        help="registry, redis://HOST:PORT/DB or, with Sentinel, "
        "redis+sentinel://HOST:26379[,HOST:26379...]/SERVICE[/DB]",
    )
    p.add_argument("--node", required=True, help="this GPU node's name (unique in the fleet)")
    p.add_argument("--region", required=True, help="region of this node")
    p.add_argument("--zone", required=True, help="zone of this node inside its region")
    src = p.add_argument_group("model servers (at least one of these)")
    src.add_argument(
        "--server",
        action="append",
        metavar="KIND=URL",
        help="a local model server, e.g. vllm=http://127.0.0.1:8000 (repeatable); KIND is "
        "vllm, sglang, tgi, triton, trtllm or ollama",
    )
    src.add_argument(
        "--config", metavar="FILE", help="agent.yaml listing servers (read again at each scan)"
    )
    src.add_argument(
        "--docker", action="store_true", help="also publish containers labelled aixds.kind"
    )
    src.add_argument(
        "--docker-url", metavar="URL", help="Docker daemon (default: DOCKER_HOST or the socket)"
    )
    src.add_argument(
        "--discover-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="look for servers again this often with --config/--docker, s (%(default)s)",
    )
    p.add_argument(
        "--gpu", default="none", choices=GPU_SOURCES, help="GPU telemetry source (%(default)s)"
    )
    p.add_argument(
        "--host-memory",
        default="auto",
        metavar="GIB|auto|off",
        help="host memory the node's sleeping model weights may take, GiB; auto: 80 %% of "
        "the node's RAM with --gpu nvml, else not published (the control plane then assumes "
        "--host-sleep-ratio x the GPU memory) (%(default)s)",
    )
    p.add_argument(
        "--server-gpus",
        action="append",
        metavar="PORT=GPUS",
        help="GPUs of the server on PORT, as its CUDA_VISIBLE_DEVICES (indices in nvidia-smi "
        "order, or UUIDs); repeatable; default: all of the node's GPUs",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="heartbeat publish period, s (%(default)s)"
    )
    p.add_argument("--ttl", type=float, default=3.0, help="record lifetime, s (%(default)s)")
    p.add_argument(
        "--lost-hold",
        type=float,
        default=300.0,
        help="a server that stops answering is published with the models it served (kept "
        "UNHEALTHY in Envoy, so the missing capacity spills to other regions) for this "
        "long, s; 0: never (%(default)s)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.25,
        help="model-server probe period, s (%(default)s)",
    )
    p.add_argument(
        "--reference-tps",
        type=float,
        default=REFERENCE_TPS,
        metavar="TOKENS_PER_S",
        help="per-sequence decode rate published as speed 1.0; the same on every agent of a "
        "fleet (%(default)s)",
    )
    p.add_argument(
        "--model-version",
        action="append",
        metavar="MODEL=VERSION",
        help="version to publish for MODEL, over what the server reports (repeatable)",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST",
        help="address Envoy should use for every replica (default: each server's own)",
    )
    lock = p.add_argument_group("one agent per node")
    lock.add_argument(
        "--takeover",
        action="store_true",
        help="replace the agent holding this node's lock (it stops) instead of exiting 3",
    )
    lock.add_argument(
        "--lock-ttl", type=float, default=15.0, metavar="S", help="node lock TTL, s (%(default)s)"
    )
    ex = p.add_argument_group("load/unload executor (the node's desired-models key)")
    ex.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        metavar="S",
        help="publish a newly loaded model as warming this long, s (%(default)s)",
    )
    ex.add_argument(
        "--drain",
        type=float,
        default=2.0,
        metavar="S",
        help="publish a model as unloading this long before unloading it, s (%(default)s)",
    )
    ex.add_argument(
        "--load-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="longest load or unload call, s (%(default)s)",
    )
    ex.add_argument(
        "--wake-warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="publish a woken server's models as warming this long, s (%(default)s)",
    )
    ex.add_argument(
        "--available",
        action="append",
        metavar="SERVER=MODEL[:GB[:LOAD_S]],...",
        help="models SERVER (a replica name, e.g. vllm-8000) can load on demand, with their "
        "GPU memory and load time: for vLLM, which cannot list them (the fake server's "
        "/sim/available wins when it answers); for Ollama and Triton, estimates of what "
        "they do not say. Repeatable",
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM: 0 then, 1 if a loop died, 2 for bad flags, 3 if locked out."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: a dozen lines a second per server.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        cfg = config_from_args(args)
        gpus = NodeGpus(cfg.gpu, parse_server_gpus(args.server_gpus))
    except ValueError as e:
        print(f"aixds agent: error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(cfg, gpus))
    except LockHeld as e:
        print(
            f"aixds agent: node {cfg.node!r} already has an agent: {e}. Stop that agent, "
            f"or start this one with --takeover (lock key {lock_key(cfg.node)}).",
            file=sys.stderr,
        )
        return EXIT_LOCK


async def _main(cfg: AgentConfig, gpus: NodeGpus) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = redis_url.connect(cfg.redis_url)
    docker = None
    if cfg.docker:
        address = node_address()
        log.info("Docker discovery on; node address %s", cfg.advertise or address)
        docker = DockerSource(lambda: connect(cfg.docker_url), address)
    try:
        return await run_agent(
            cfg, registry.RedisRegistry(client), gpus, stop, redis=client, docker=docker
        )
    finally:
        if docker is not None:
            docker.close()
        gpus.close()
        await client.aclose()


async def run_agent(
    cfg: AgentConfig,
    writer: RegistryWriter,
    gpus: GpuSource | GpuProvider,
    stop: asyncio.Event,
    *,
    redis: aioredis.Redis | None = None,
    docker: DockerSource | None = None,
) -> int:
    """Publish (and, with ``redis``, lock and converge) until ``stop``; then clean up.

    ``gpus`` is one source for every server, or a provider of one per server. Raises
    ``lock.LockHeld`` if another agent serves the node (and not ``cfg.takeover``).
    """
    provider = gpus if isinstance(gpus, GpuProvider) else SharedGpu(gpus)
    scan = None if docker is None else docker.scan
    return await run_node(cfg, writer, provider, stop, redis=redis, docker=scan)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="aixds agent", description=__doc__)
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))
