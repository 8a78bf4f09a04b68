"""``aixds drain``: take a replica or a whole node out of service (and back) via the API.

Writes send ``Authorization: Bearer`` with ``--token`` or ``AIXDS_API_TOKEN``. Exit status:
0 done, 1 refused by the API (the reason is printed), 2 API unreachable or bad arguments.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from controlplane.api.rollout_cli import CliError, add_api_options, call_api, run_cli, show

EXAMPLES = """\
examples:
  export AIXDS_API_TOKEN=s3cret           # the token `aixds serve --api-token` was given
  aixds drain gpu-b7                      # every replica of node gpu-b7, now and later
  aixds drain gpu-a1/vllm-8000            # one replica
  aixds drain --list
  aixds drain --undo gpu-b7               # back in service
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_api_options(p)
    p.add_argument("target", nargs="?", help="a node name, or a replica id NODE/NAME")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--undo", action="store_true", help="put the target back in service")
    mode.add_argument("--list", action="store_true", help="show what is drained")


def run(args: argparse.Namespace) -> int:
    return run_cli("aixds drain", _run, args)


def _run(args: argparse.Namespace) -> int:
    if args.list or not args.target:
        if args.undo:
            raise CliError("--undo needs a target", 2)
        doc = call_api(args, "GET", "/v1/drains")
        show(doc, args.json, format_drains, write=False)
        return 0
    path = "/v1/drains/" + quote(args.target, safe="/")
    if args.undo:
        if args.revision is not None:
            path += f"?revision={args.revision}"
        doc = call_api(args, "DELETE", path)
    else:
        body = {} if args.revision is None else {"revision": args.revision}
        doc = call_api(args, "POST", path, body)
    show(doc, args.json, format_drains, write=True)
    return 0


def format_drains(doc: dict[str, Any]) -> str:
    """``GET /v1/drains`` (or a write's answer) as lines for a terminal."""
    drained = doc.get("drained", [])
    if not drained:
        return f"drained (intent revision {doc['revision']}): none"
    lines = [f"drained (intent revision {doc['revision']}):"]
    for d in drained:
        now = ", ".join(d["replicas"]) or "no replica now"
        lines.append(f"  {d['kind']} {d['target']}: {now}")
    return "\n".join(lines)
