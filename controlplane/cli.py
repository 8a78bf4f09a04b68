"""The ``aixds`` command: argument parsing only, one function per command.

Each command's module is imported only when that command runs, so ``aixds --help`` is fast
and one command's dependencies never break another.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EPILOG = {
    "serve": (
        "example:\n  AIXDS_API_TOKEN=s3cret aixds serve --redis redis://127.0.0.1:6379/0"
        " --xds 127.0.0.1:18000 --api 127.0.0.1:18080\n\n"
        "API writes need a token: --api-token or AIXDS_API_TOKEN (an admin token), or\n"
        "named tokens with scopes (read, operate, admin) in --tokens-file or\n"
        "AIXDS_API_TOKENS; without any the API is read-only. Every change is in the\n"
        "audit log: aixds audit.\n\n"
        "mutual TLS for Envoys, TLS for the API (README: Transport security):\n"
        "  aixds serve ... --tls-cert pki/controlplane.crt --tls-key pki/controlplane.key"
        " --client-ca pki/ca.crt"
    ),
    "envoy": (
        "example:\n  aixds envoy --xds 127.0.0.1:18000 --node-id edge-us-1 --region us"
        " --zone us-a \\\n      --listen 127.0.0.1:10000 --admin 127.0.0.1:9901\n\n"
        "several control planes (on one Redis): Envoy uses one, moves to another if it fails:\n"
        "  aixds envoy --xds cp-a:18000,cp-b:18000,cp-c:18000 --node-id edge-us-1 ...\n\n"
        "to a control plane with mutual TLS: add\n"
        "      --ca pki/ca.crt --tls-cert pki/envoy-edge-us-1.crt --tls-key pki/envoy-edge-us-1.key"
    ),
    "fake-llm": "example:\n  aixds fake-llm --listen 127.0.0.1:8001 --model llama --version v1",
    "demo": "example:\n  aixds demo            # Ctrl-C stops every process it started",
    "status": (
        "example:\n  aixds status --api http://127.0.0.1:18080\n"
        "  aixds status --api https://cp.internal:18080 --ca pki/ca.crt"
    ),
}

TOKEN_ENV = "AIXDS_API_TOKEN"
"""Environment variable holding the API token (``serve`` checks it, ``rollout`` sends it)."""
TOKENS_ENV = "AIXDS_API_TOKENS"
"""Environment variable holding named tokens with scopes (``--tokens-file``'s format)."""


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _redis_url(value: str) -> str:
    from controlplane.fleet.redis_url import argument  # redis-py: only when parsing --redis

    return argument(value)


def _serve_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis",
        default="",
        type=_redis_url,
        help="this region's Redis URL (default: fleet.yaml's for --region, else "
        "redis://127.0.0.1:6379/0); redis+sentinel://HOST:26379[,HOST:26379...]/SERVICE[/DB] "
        "follows the primary that Redis Sentinel names",
    )
    p.add_argument(
        "--region",
        default="",
        help="this control plane's region; with a Redis per region in fleet.yaml it also "
        "reads every other region's registry",
    )
    p.add_argument(
        "--region-grace",
        type=_positive,
        default=10.0,
        metavar="S",
        help="a remote registry silent this long is lost (demoted after half) (10)",
    )
    p.add_argument("--xds", type=host_port, default=("127.0.0.1", 18000), help="ADS gRPC HOST:PORT")
    p.add_argument("--api", type=host_port, default=("127.0.0.1", 18080), help="HTTP API HOST:PORT")
    p.add_argument("--config", type=Path, help="fleet.yaml (region distances, session header)")
    p.add_argument("--coalesce-ms", type=float, default=2.0, help="change coalescing window")
    p.add_argument("--resync", type=float, default=5.0, help="full registry resync period, s")
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    _tls_args(p)
    a = p.add_argument_group("access (tokens, scopes, audit log)")
    a.add_argument(
        "--api-token",
        default=None,
        help=f"an admin token, named api-token (default: ${TOKEN_ENV}; no token at all: "
        "read-only API)",
    )
    a.add_argument(
        "--tokens-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="YAML/JSON list of {name, token or sha256, scopes: [read|operate|admin]} "
        f"(also: ${TOKENS_ENV}, same format)",
    )
    a.add_argument(
        "--require-read-token",
        action="store_true",
        help="reads (GET /v1/..., /metrics) need a token with scope read too; /healthz stays open",
    )
    a.add_argument(
        "--audit-keep",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="audit-log entries kept (about; 10000)",
    )
    r = p.add_argument_group("rollouts")
    r.add_argument(
        "--min-ready", type=_positive_int, default=1, help="ready replicas a target needs (1)"
    )
    r.add_argument(
        "--drain-settle",
        type=_non_negative,
        default=1.0,
        metavar="S",
        help="routes move off a version this long before its hosts turn DRAINING (1.0)",
    )
    r.add_argument(
        "--drain",
        type=_non_negative,
        default=30.0,
        metavar="S",
        help="a version stays DRAINING this long before its cluster is removed (30)",
    )
    r.add_argument(
        "--lrs-interval",
        type=_positive,
        default=1.0,
        metavar="S",
        help="load-reporting interval asked of Envoys (1.0)",
    )
    r.add_argument(
        "--no-auto-rollback",
        action="store_true",
        help="judge canaries and report, but never roll back by itself",
    )
    r.add_argument(
        "--rollback-window",
        type=_positive,
        default=10.0,
        metavar="S",
        help="seconds of load a canary is judged on (10)",
    )
    r.add_argument(
        "--rollback-min-requests",
        type=_positive_int,
        default=20,
        metavar="N",
        help="canary requests needed in the window (20)",
    )
    r.add_argument(
        "--rollback-margin",
        type=_fraction,
        default=0.05,
        metavar="F",
        help="roll back when the canary's error rate exceeds the stable's by more (0.05)",
    )
    _cold_start_args(p)


def _tls_args(p: argparse.ArgumentParser) -> None:
    from controlplane.tls import add_pem_flags

    add_pem_flags(
        p.add_argument_group("transport security (README: Transport security)"),
        ("--tls-cert", "this control plane's certificate: xDS/LRS and the API over TLS"),
        ("--tls-key", "the key of --tls-cert"),
        (
            "--client-ca",
            "mutual TLS on xDS/LRS: Envoys must present a certificate this CA signed "
            "(plaintext Envoys and Envoys without one get no configuration)",
        ),
        ("--api-tls-cert", "another certificate for the API (default: --tls-cert)"),
        ("--api-tls-key", "the key of --api-tls-cert"),
    )


def _cold_start_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("cold start (models loaded on demand)")
    c.add_argument(
        "--activator",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="hold requests for a model served nowhere here while it loads (off: such a"
        " model answers 404)",
    )
    c.add_argument(
        "--activator-advertise",
        type=_host_ports,
        default=(),
        metavar="HOST:PORT[,...]",
        help="the activators Envoys are given (every control plane's; default: --activator)",
    )
    c.add_argument(
        "--hold",
        type=_positive,
        default=120.0,
        metavar="S",
        help="longest a request waits for a load before 503 + Retry-After (120)",
    )
    _placement_args(c)


def _placement_args(c: Any) -> None:
    c.add_argument(
        "--no-placement",
        action="store_true",
        help="never load, sleep or unload models by itself (pins and demand ignored)",
    )
    for flag, default, what in (
        ("--replica-rps", 2.0, "requests/s per replica before another one loads the model"),
        ("--scale-down-after", 120.0, "an unneeded model sleeps after this many s"),
        ("--unload-after", 600.0, "a sleeping model is unloaded this many s later"),
        ("--placement-hold", 60.0, "nothing goes down within this many s of a change"),
        ("--keep-alive", 600.0, "keep-alive when a model's idle times show no pattern, s"),
        ("--forecast-bin", 60.0, "idle-time histogram bin width (240 bins), s"),
        ("--forecast-day", 86400.0, "period of the time-of-day profile, s"),
    ):
        c.add_argument(
            flag, type=_positive, default=default, metavar="S", help=f"{what} ({default:g})"
        )
    c.add_argument(
        "--host-sleep-ratio",
        type=_positive,
        default=2.0,
        metavar="X",
        help="host memory for the weights of servers asleep on their own (one model per "
        "server), x the node's GPU memory, on nodes whose agent publishes none "
        "(aixds agent --host-memory) (2)",
    )


def placement_settings(args: argparse.Namespace) -> Any:
    from controlplane.decide.forecast import ForecastConfig
    from controlplane.decide.placement import PlacementConfig
    from controlplane.runtime.placement_loop import PlacementSettings

    return PlacementSettings(
        enabled=not args.no_placement,
        placement=PlacementConfig(
            replica_rps=args.replica_rps,
            scale_down_after_s=args.scale_down_after,
            unload_after_s=args.unload_after,
            hold_s=args.placement_hold,
            host_sleep_ratio=args.host_sleep_ratio,
        ),
        forecast=ForecastConfig(
            fixed_keep_alive_s=args.keep_alive,
            bin_s=args.forecast_bin,
            day_s=args.forecast_day,
        ),
    )


def _host_ports(value: str) -> tuple[tuple[str, int], ...]:
    return tuple(host_port(v) for v in value.split(",") if v)


def cmd_serve(args: argparse.Namespace) -> int:
    from controlplane.api.tokens import TokensError
    from controlplane.runtime.serve import serve
    from controlplane.settings import ConfigError, ServeSettings

    s = ServeSettings(
        redis_url=args.redis,
        region=args.region,
        region_grace_s=args.region_grace,
        xds_host=args.xds[0],
        xds_port=args.xds[1],
        api_host=args.api[0],
        api_port=args.api[1],
        config=args.config,
        coalesce_ms=args.coalesce_ms,
        resync_s=args.resync,
        test_hooks=args.test_hooks,
        api_token=args.api_token if args.api_token is not None else os.environ.get(TOKEN_ENV, ""),
        tokens_file=args.tokens_file,
        tokens_env=os.environ.get(TOKENS_ENV, ""),
        require_read_token=args.require_read_token,
        audit_max_len=args.audit_keep,
        min_ready=args.min_ready,
        drain_settle_s=args.drain_settle,
        drain_s=args.drain,
        lrs_interval_s=args.lrs_interval,
        auto_rollback=not args.no_auto_rollback,
        rollback_window_s=args.rollback_window,
        rollback_min_requests=args.rollback_min_requests,
        rollback_margin=args.rollback_margin,
        activator_host=args.activator[0] if args.activator else "",
        activator_port=args.activator[1] if args.activator else 0,
        activator_advertise=args.activator_advertise,
        hold_s=args.hold,
        placement=placement_settings(args),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        api_tls_cert=args.api_tls_cert,
        api_tls_key=args.api_tls_key,
    )
    try:
        return asyncio.run(serve(s))
    except (ConfigError, TokensError) as e:
        print(f"aixds serve: {e}", file=sys.stderr)
        return 2


def _number(kind: type[float] | type[int], ok: Callable[[float], bool], what: str) -> Any:
    def parse(v: str) -> float | int:
        try:
            n = kind(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
        if not math.isfinite(n) or not ok(n):
            raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
        return n

    return parse


_positive = _number(float, lambda x: x > 0, "> 0")
_non_negative = _number(float, lambda x: x >= 0, ">= 0")
_positive_int = _number(int, lambda x: x >= 1, ">= 1")
_fraction = _number(float, lambda x: 0 <= x <= 1, "in [0, 1]")


def _status_parser(p: argparse.ArgumentParser) -> None:
    from controlplane.api.rollout_cli import add_api_url

    add_api_url(p)
    p.add_argument(
        "--token",
        default=None,
        help=f"API token, for a server that requires one to read (default: ${TOKEN_ENV})",
    )


def cmd_status(args: argparse.Namespace) -> int:
    from controlplane.status import print_status

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    return print_status(args.api, token, args.ca)


def _delegate(
    module: str,
) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    def configure(p: argparse.ArgumentParser) -> None:
        importlib.import_module(module).configure_parser(p)

    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).run(args))

    return configure, run


COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "serve": ("run the control plane (xDS server, reconcile loop, API)", _serve_parser, cmd_serve),
    "agent": (
        "run a node agent publishing replica state to Redis",
        *_delegate("controlplane.agent.main"),
    ),
    "envoy": ("render the Envoy bootstrap and run Envoy", *_delegate("controlplane.proxy.runner")),
    "fake-llm": (
        "run a fake vLLM-compatible model server",
        *_delegate("controlplane.sim.fake_llm"),
    ),
    "demo": ("run the whole local fleet with live table", *_delegate("controlplane.demo")),
    "status": ("show node groups, endpoints, xDS state and rollouts", _status_parser, cmd_status),
    "rollout": (
        "blue-green switches, canaries, promote and rollback through the config API",
        *_delegate("controlplane.api.rollout_cli"),
    ),
    "drain": (
        "take a replica or a whole node out of service, or put it back",
        *_delegate("controlplane.api.drain_cli"),
    ),
    "affinity": (
        "session affinity per model: on, off, or back to fleet.yaml's setting",
        *_delegate("controlplane.api.affinity_cli"),
    ),
    "models": (
        "load and unload models on a node (its desired-models key) through the config API",
        *_delegate("controlplane.api.models_cli"),
    ),
    "audit": (
        "who changed what and when: the audit log of intent, drains, models and fault clears",
        *_delegate("controlplane.api.audit_cli"),
    ),
    "token": (
        "make a new API token with its tokens-file entry, or hash one",
        *_delegate("controlplane.api.token_cli"),
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aixds", description="Envoy xDS control plane for AI inference fleets"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Configure only the chosen sub-command's parser (imports its module), list the others.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (help_text, configure, _) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == chosen:
            configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _, _, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
