"""``aixds rollout``: drive blue-green switches and canaries through the config API.

Writes send ``Authorization: Bearer`` with ``--token`` or ``AIXDS_API_TOKEN``. Exit status:
0 done, 1 refused by the API (the reason is printed), 2 API unreachable or bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from controlplane.tls import API_CA_ENV, TlsError, client_verify, verify_hint

EXAMPLES = """\
examples:
  export AIXDS_API_TOKEN=s3cret           # the token `aixds serve --api-token` was given
  aixds rollout status                    # every model
  aixds rollout start llama --to v2 --canary 10
  aixds rollout set llama 50
  aixds rollout promote llama             # v2 becomes stable, v1 drains
  aixds rollout rollback llama --reason "p99 latency"
  aixds rollout start llama --to v3       # blue-green switch, 100% at once
  aixds rollout abort llama
"""

DEFAULT_API = "http://127.0.0.1:18080"


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_api_url(p: argparse.ArgumentParser) -> None:
    """Add ``--api`` (the API's URL) and ``--ca`` (the CA that signed an https API)."""
    p.add_argument(
        "--api",
        default=os.environ.get("AIXDS_API", DEFAULT_API),
        help="control-plane API URL (default: $AIXDS_API or %(default)s)",
    )
    p.add_argument(
        "--ca",
        default=os.environ.get(API_CA_ENV, ""),
        metavar="PEM",
        help=f"CA certificate that signed an https API (default: ${API_CA_ENV}; none: the "
        "system's trusted CAs)",
    )


def api_client(args: argparse.Namespace, timeout: float) -> httpx.Client:
    """An HTTP client for ``args.api``, verifying an https API with ``args.ca``."""
    try:
        verify = client_verify(args.ca)
    except TlsError as e:
        raise CliError(str(e), 2) from None
    return httpx.Client(base_url=args.api, timeout=timeout, verify=verify)


def add_api_options(common: argparse.ArgumentParser, *, revision: bool = True) -> None:
    """Add the flags every API command takes: ``--api``, ``--ca``, ``--token``, ``--json``,
    and ``--revision`` for the commands that write the intent document."""
    add_api_url(common)
    common.add_argument(
        "--token",
        default=None,
        help="API token (default: $AIXDS_API_TOKEN); sent with every request",
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    if not revision:
        return
    common.add_argument(
        "--revision",
        type=int,
        default=None,
        help="refuse (409) unless the intent is still at this revision",
    )


def action_parsers(
    p: argparse.ArgumentParser, examples: str, *, revision: bool = True
) -> tuple[argparse.ArgumentParser, Any]:
    """Set up ``p`` for ``aixds GROUP ACTION ...``: the parent parser with the API flags
    (for each action's parser) and the sub-parsers to add actions to."""
    p.epilog = examples
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    add_api_options(common, revision=revision)
    return common, p.add_subparsers(dest="action", required=True, metavar="ACTION")


def configure_parser(p: argparse.ArgumentParser) -> None:
    common, sub = action_parsers(p, EXAMPLES)

    s = sub.add_parser(
        "start",
        parents=[common],
        help="blue-green switch to a version, or start a canary of it",
        description="Blue-green switch (all traffic at once) or, with --canary, a canary.",
    )
    s.add_argument("model", help="model name")
    s.add_argument("--to", required=True, metavar="VERSION", help="target version")
    s.add_argument(
        "--canary", type=_percent, metavar="PERCENT", help="canary share; omit for a switch"
    )

    s = sub.add_parser("set", parents=[common], help="set the canary's traffic share")
    s.add_argument("model", help="model name")
    s.add_argument("percent", type=_percent)

    s = sub.add_parser("promote", parents=[common], help="make the canary stable")
    s.add_argument("model", help="model name")

    s = sub.add_parser(
        "rollback", parents=[common], help="back to stable (canary) or the previous version"
    )
    s.add_argument("model", help="model name")
    s.add_argument("--reason", default="", help="recorded with the rollback")

    s = sub.add_parser("abort", parents=[common], help="stop the canary without blame")
    s.add_argument("model", help="model name")

    s = sub.add_parser("status", parents=[common], help="rollout state of one or every model")
    s.add_argument("model", nargs="?", help="model name (default: every model)")


def _percent(v: str) -> float:
    try:
        f = float(v.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if not 0.0 <= f <= 100.0:
        raise argparse.ArgumentTypeError("percent must be in [0, 100]")
    return f


def run(args: argparse.Namespace) -> int:
    return run_cli("aixds rollout", _run, args)


def run_cli(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``body(args)``, with a ``CliError`` printed as ``prog: reason`` and its exit code."""
    try:
        return body(args)
    except CliError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.code


def _run(args: argparse.Namespace) -> int:
    path = "/v1/rollouts/" + quote(args.model or "", safe="/")
    if args.action == "status":
        if args.model:
            doc = call_api(args, "GET", path)
            rollouts = [doc]
        else:
            doc = call_api(args, "GET", "/v1/rollouts")
            rollouts = doc["rollouts"]
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            for r in rollouts:
                print(format_rollout(r))
        return 0
    body: dict[str, Any] = {}
    if args.revision is not None:
        body["revision"] = args.revision
    if args.action == "start":
        body["to"] = args.to
        if args.canary is not None:
            body["canary_percent"] = args.canary
    elif args.action == "set":
        path += "/percent"
        body["percent"] = args.percent
    elif args.action == "rollback":
        path += "/rollback"
        if args.reason:
            body["reason"] = args.reason
    else:
        path += f"/{args.action}"
    doc = call_api(args, "POST", path, body)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    envoys = doc["envoys"]
    state = "applied" if doc["changed"] else "unchanged (already so)"
    print(
        f"{state}: intent revision {doc['revision']}; "
        f"{envoys['current']}/{envoys['total']} Envoys on it"
    )
    print(format_rollout(doc["rollout"]))
    return 0


def show(
    doc: dict[str, Any], as_json: bool, fmt: Callable[[dict[str, Any]], str], *, write: bool
) -> None:
    """Print an API answer: its JSON, or ``fmt(doc)`` after, for a write, a line saying
    whether it changed anything and how many Envoys have it (drains, affinity)."""
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    if write:
        envoys = doc["envoys"]
        state = "applied" if doc["changed"] else "unchanged (already so)"
        print(f"{state}: {envoys['current']}/{envoys['total']} Envoys on it")
    print(fmt(doc))


def call_api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    token = args.token if args.token is not None else os.environ.get("AIXDS_API_TOKEN", "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with api_client(args, 10.0) as c:
            r = c.request(method, path, json=body, headers=headers)
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {args.api}: {e}{verify_hint(e, args.api)}", 2) from None
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if r.status_code >= 400:
        if isinstance(doc, dict) and "error" in doc:
            raise CliError(f"{r.status_code} {doc['error']}: {doc.get('detail', '')}", 1)
        raise CliError(f"{r.status_code}: {r.text[:300]}", 1)
    if doc is None:
        raise CliError(f"{path}: the API did not answer JSON", 2)
    return doc


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def format_rollout(r: dict[str, Any]) -> str:
    """A few lines for one model's rollout view (``GET /v1/rollouts/{model}``)."""
    split = ", ".join(f"{v} {p:g}%" for v, p in sorted(r.get("traffic", {}).items())) or "-"
    lines = [f"{r['model']}: traffic {split}"]
    state = f"  stable {r.get('stable') or '-'}"
    if r.get("canary"):
        state += (
            f", canary {r['canary']} at {r['canary_percent']:g}% since {_when(r['started_at'])}"
        )
    if r.get("previous"):
        state += f", previous {r['previous']}"
    lines.append(state)
    if r.get("fallback"):
        lines.append(
            f"  FAIL-OPEN: stable {r.get('stable')} has no serving replica; "
            f"traffic goes to {r['fallback']} until it serves again"
        )
    for v, d in r.get("draining", {}).items():
        lines.append(f"  {v}: {d['phase']} (removed at {_when(d['remove_at'])})")
    h = r.get("health")
    if h:
        lines.append(f"  canary health: {h['reason']}")
    lr = r.get("last_rollback")
    if lr:
        lines.append(
            f"  last rollback ({lr['trigger']}, {_when(lr['at'])}): "
            f"{lr['from_version']} -> {lr['to_version']}: {lr['reason']}"
        )
    return "\n".join(lines)
