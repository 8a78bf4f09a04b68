"""``aixds audit``: who changed what and when, from ``GET /v1/audit``, as a table.

Sends ``Authorization: Bearer`` with ``--token`` or ``AIXDS_API_TOKEN`` (needed when the
server requires a token to read). Exit status: 0 done, 1 refused by the API (the reason
is printed), 2 API unreachable or bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any
from urllib.parse import urlencode

from controlplane.api.rollout_cli import CliError, add_api_options, call_api, run_cli

EXAMPLES = """\
examples:
  aixds audit                             # the latest 20 changes, oldest first
  aixds audit --limit 200
  aixds audit --since 1765052000000-0     # what came after that entry
  aixds audit --follow                    # and keep printing new ones (Ctrl-C stops)
  aixds audit --json | jq '.entries[] | select(.who == "alice")'
"""

HEADER = ("TIME", "WHO", "ACTION", "TARGET", "CHANGE")
MAX_VALUE = 60
"""A changed value longer than this (as JSON) is cut, with ``...``: ``--json`` has it all."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_api_options(p, revision=False)
    p.add_argument("--limit", type=_limit, default=20, metavar="N", help="entries (20)")
    p.add_argument("--since", default=None, metavar="ID", help="only entries after this id")
    p.add_argument(
        "--follow", action="store_true", help="keep polling every second for new entries"
    )


def _limit(v: str) -> int:
    if not v.isdigit() or not 1 <= int(v) <= 10_000:
        raise argparse.ArgumentTypeError(f"must be 1..10000, got {v!r}")
    return int(v)


def run(args: argparse.Namespace) -> int:
    return run_cli("aixds audit", _run, args)


def _run(args: argparse.Namespace) -> int:
    doc = _get(args, args.since)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_audit(doc["entries"]))
    since = doc.get("last_id")
    while args.follow:
        time.sleep(1.0)
        doc = _get(args, since)
        since = doc.get("last_id") or since
        for e in doc["entries"]:
            print(json.dumps(e) if args.json else format_audit([e], header=False), flush=True)
    return 0


def _get(args: argparse.Namespace, since: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {"limit": args.limit}
    if since:
        query["since"] = since
    doc = call_api(args, "GET", "/v1/audit?" + urlencode(query))
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise CliError("/v1/audit did not answer {entries: [...]}", 2)
    return doc


def format_audit(entries: list[dict[str, Any]], *, header: bool = True) -> str:
    """Entries of ``GET /v1/audit`` as an aligned table, one line per entry."""
    if not entries and header:
        return "no changes recorded"
    rows = [
        (
            dt.datetime.fromtimestamp(e.get("at", 0)).strftime("%Y-%m-%d %H:%M:%S"),
            str(e.get("who", "")),
            str(e.get("action", "")),
            str(e.get("target", "")),
            describe(e.get("old"), e.get("new")),
        )
        for e in entries
    ]
    if header:
        rows.insert(0, HEADER)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in rows
    )


def describe(old: Any, new: Any) -> str:
    """``path: old -> new`` for every changed part, ``; ``-separated."""
    return "; ".join(
        f"{path}: {_short(a)} -> {_short(b)}" if path else f"{_short(a)} -> {_short(b)}"
        for path, a, b in _leaves("", old, new)
    )


def _leaves(path: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict) and (old or new):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(old.keys() | new.keys()):
            out += _leaves(f"{path}.{k}" if path else str(k), old.get(k), new.get(k))
        return out
    return [(path, old, new)]


def _short(v: Any) -> str:
    text = json.dumps(v, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
