"""``aixds agent``: flags -> ``AgentConfig`` -> adapters, registry, ``Agent``; run until a signal.

``configure_parser`` / ``run`` are the CLI command; ``run_agent`` is the same thing for a
caller that owns the event loop and the stop event (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from controlplane.agent.gpu import GPU_SOURCES, GpuSource, make_gpu_source
from controlplane.agent.publisher import Agent, RegistryHealth, ReplicaPublisher, Target, Timing
from controlplane.agent.vllm import VllmAdapter
from controlplane.fleet import registry
from controlplane.fleet.model import ServerKind
from controlplane.fleet.store import RegistryWriter

log = logging.getLogger(__name__)

IMPLEMENTED_KINDS = frozenset({ServerKind.VLLM})

EXAMPLES = """\
examples:
  aixds agent --redis redis://127.0.0.1:6379/0 --node gpu-a1 --region eu --zone eu-1 \\
      --server vllm=http://127.0.0.1:8001
  aixds agent --redis redis://redis:6379/0 --node gpu-b7 --region us --zone us-2 \\
      --server vllm=http://127.0.0.1:8001 --server vllm=http://127.0.0.1:8002 \\
      --model-version llama-3-8b=v2 --advertise 10.0.3.7

Each --server becomes one replica, id NODE/KIND-PORT, published to Redis every
--interval seconds and at once when its models or load change.
"""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One ``--server KIND=URL``."""

    kind: ServerKind
    url: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``aixds agent`` was told."""

    redis_url: str
    node: str
    region: str
    zone: str
    servers: tuple[ServerSpec, ...]
    gpu: str = "none"
    timing: Timing = field(default_factory=Timing)
    versions: Mapping[str, str] = field(default_factory=dict)
    """``--model-version MODEL=VERSION``: overrides what the server reports."""
    advertise: str | None = None
    """Address published for every replica; default: the host of its ``--server`` URL."""

    def targets(self) -> list[Target]:
        return [
            Target(
                replica_id=f"{self.node}/{s.kind.value}-{s.port}",
                node=self.node,
                region=self.region,
                zone=self.zone,
                address=self.advertise or s.host,
                port=s.port,
                kind=s.kind,
            )
            for s in self.servers
        ]


def parse_server(value: str) -> ServerSpec:
    """``KIND=URL`` -> ``ServerSpec``; ``ValueError`` with a reason a user can act on."""
    kind_s, sep, url_s = value.partition("=")
    if not sep or not url_s:
        raise ValueError(f"--server expects KIND=URL, got {value!r}")
    try:
        kind = ServerKind(kind_s.strip().lower())
    except ValueError:
        known = ", ".join(k.value for k in ServerKind)
        raise ValueError(f"unknown server kind {kind_s!r} (known: {known})") from None
    if kind not in IMPLEMENTED_KINDS:
        raise ValueError(
            f"server kind {kind.value!r} is not implemented yet "
            f"(implemented: {', '.join(sorted(k.value for k in IMPLEMENTED_KINDS))})"
        )
    try:
        url = httpx.URL(url_s)
    except httpx.InvalidURL as e:
        raise ValueError(f"bad URL in --server {value!r}: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"--server URL must be http(s)://HOST[:PORT], got {url_s!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    return ServerSpec(kind=kind, url=str(url).rstrip("/"), host=url.host, port=port)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k or not val:
            raise ValueError(f"{flag} expects MODEL=VERSION, got {v!r}")
        out[k] = val
    return out


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Check the flags together; ``ValueError`` says what is wrong."""
    for flag, v in (("--node", args.node), ("--region", args.region)):
        if not v or "/" in v:
            raise ValueError(f"{flag} must be non-empty and contain no '/', got {v!r}")
    servers = tuple(parse_server(s) for s in args.server)
    if args.gpu not in GPU_SOURCES:
        raise ValueError(f"--gpu must be one of {', '.join(GPU_SOURCES)}")
    if not (args.interval > 0 and args.poll_interval > 0):
        raise ValueError("--interval and --poll-interval must be positive")
    if args.ttl <= args.interval:
        raise ValueError(f"--ttl ({args.ttl}) must exceed --interval ({args.interval})")
    cfg = AgentConfig(
        redis_url=args.redis,
        node=args.node,
        region=args.region,
        zone=args.zone,
        servers=servers,
        gpu=args.gpu,
        timing=Timing(interval_s=args.interval, ttl_s=args.ttl, poll_interval_s=args.poll_interval),
        versions=_pairs(args.model_version, "--model-version"),
        advertise=args.advertise,
    )
    ids = [t.replica_id for t in cfg.targets()]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"two --server flags give the same replica id {dupes}: ports must differ")
    for s in servers:
        if not args.advertise and s.host in ("0.0.0.0", "::"):
            raise ValueError(f"{s.url} is a wildcard address: give --advertise HOST")
    return cfg


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add ``aixds agent``'s flags to ``p``."""
    if p.epilog is None:
        p.epilog = EXAMPLES
        p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--redis", required=True, metavar="URL", help="registry, redis://HOST:PORT/DB")
    p.add_argument("--node", required=True, help="this GPU node's name (unique in the fleet)")
    p.add_argument("--region", required=True, help="region of this node")
    p.add_argument("--zone", required=True, help="zone of this node inside its region")
    p.add_argument(
        "--server",
        required=True,
        action="append",
        metavar="KIND=URL",
        help="a local model server, e.g. vllm=http://127.0.0.1:8000 (repeatable; "
        "only vllm is implemented yet)",
    )
    p.add_argument(
        "--gpu", default="none", choices=GPU_SOURCES, help="GPU telemetry source (%(default)s)"
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="heartbeat publish period, s (%(default)s)"
    )
    p.add_argument("--ttl", type=float, default=3.0, help="record lifetime, s (%(default)s)")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.25,
        help="model-server probe period, s (%(default)s)",
    )
    p.add_argument(
        "--model-version",
        action="append",
        metavar="MODEL=VERSION",
        help="version to publish for MODEL, over what the server reports (repeatable)",
    )
    p.add_argument(
        "--advertise", metavar="HOST", help="address Envoy should use (default: the URL's host)"
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM: 0 then, 2 for bad flags, 1 if a loop died."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: a dozen lines a second per server.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        cfg = config_from_args(args)
        gpus = make_gpu_source(cfg.gpu)
    except ValueError as e:
        print(f"aixds agent: error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_main(cfg, gpus))


async def _main(cfg: AgentConfig, gpus: GpuSource) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = registry.connect(cfg.redis_url)
    try:
        return await run_agent(cfg, registry.RedisRegistry(client), gpus, stop)
    finally:
        await client.aclose()


async def run_agent(
    cfg: AgentConfig, writer: RegistryWriter, gpus: GpuSource, stop: asyncio.Event
) -> int:
    """Probe and publish until ``stop`` is set; then remove this node's records."""
    # Short timeouts: a hung server must not hold a probe for long. trust_env=False: a
    # proxy from the environment must never sit between the agent and a local server.
    timeout = httpx.Timeout(1.0, connect=0.5)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
        health = RegistryHealth()
        pubs = [
            ReplicaPublisher(
                t, VllmAdapter(s.url, http, cfg.versions), gpus, writer, cfg.timing, health
            )
            for s, t in zip(cfg.servers, cfg.targets(), strict=True)
        ]
        log.info(
            "agent %s (%s/%s) publishing %s",
            cfg.node,
            cfg.region,
            cfg.zone,
            ", ".join(
                f"{t.replica_id} <- {s.url}"
                for s, t in zip(cfg.servers, cfg.targets(), strict=True)
            ),
        )
        return await Agent(pubs, cfg.timing).run(stop)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="aixds agent", description=__doc__)
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))
