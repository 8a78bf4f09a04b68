"""``aixds affinity``: session affinity per model (on, off, or back to the default) via the API.

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
  aixds affinity                          # every model: on/off and where that comes from
  aixds affinity llama-3-8b off           # its requests follow load only
  aixds affinity llama-3-8b on
  aixds affinity llama-3-8b default       # forget the API's setting (fleet.yaml applies)
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_api_options(p)
    p.add_argument("model", nargs="?", help="the model name")
    p.add_argument("setting", nargs="?", choices=("on", "off", "default"), help="what to set")


def run(args: argparse.Namespace) -> int:
    return run_cli("aixds affinity", _run, args)


def _run(args: argparse.Namespace) -> int:
    if args.model is None or args.setting is None:
        if args.model is not None:
            raise CliError("say on, off or default after the model", 2)
        doc = call_api(args, "GET", "/v1/affinity")
        show(doc, args.json, format_affinity, write=False)
        return 0
    path = "/v1/affinity/" + quote(args.model, safe="/")
    if args.setting == "default":
        if args.revision is not None:
            path += f"?revision={args.revision}"
        doc = call_api(args, "DELETE", path)
    else:
        body: dict[str, Any] = {"enabled": args.setting == "on"}
        if args.revision is not None:
            body["revision"] = args.revision
        doc = call_api(args, "PUT", path, body)
    show(doc, args.json, format_affinity, write=True)
    return 0


def format_affinity(doc: dict[str, Any]) -> str:
    """``GET /v1/affinity`` (or a write's answer) as lines for a terminal."""
    default = "on" if doc["default"] else "off"
    lines = [
        f"session affinity (intent revision {doc['revision']}; session key: the"
        f" {doc['session_header']} header, else the body's user; default {default}):"
    ]
    for m in doc["models"]:
        lines.append(f"  {m['model']}: {'on' if m['enabled'] else 'off'} ({m['source']})")
    if not doc["models"]:
        lines.append("  no model served yet")
    return "\n".join(lines)
