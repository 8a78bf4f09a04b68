"""``aixds models``: load and unload models on a node through the config API.

Writes the node's desired-models key (``PUT /v1/nodes/{node}/models/{model}``); the node's
agent acts on it within a second. Writes send ``Authorization: Bearer`` with ``--token``
or ``AIXDS_API_TOKEN``. Exit status: 0 done, 1 refused by the API (the reason is
printed), 2 API unreachable or bad arguments.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from controlplane.api.rollout_cli import action_parsers, call_api, run_cli

EXAMPLES = """\
examples:
  export AIXDS_API_TOKEN=s3cret           # the token `aixds serve --api-token` was given
  aixds models list gpu-a1
  aixds models load gpu-a1 sql-lora --server vllm-8000 --path /adapters/sql-v2 --version v2
  aixds models load gpu-a1 llama3.2:3b --server ollama-11434 --keep-alive 30m
  aixds models unload gpu-a1 sql-lora --server vllm-8000
  aixds models forget gpu-a1 sql-lora     # stop managing it (nothing is unloaded)
  aixds models pin llama-70b --min 1 --region us-east   # 1 replica there, never unloaded
  aixds models pin llama-70b --min 1 --fallback llama-8b --priority 10
  aixds models unpin llama-70b            # no pins, bounds or fallback any more
  aixds models placement                  # pins, and what placement decided and why
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    common, sub = action_parsers(p, EXAMPLES, revision=False)  # no intent revision here
    s = sub.add_parser("list", parents=[common], help="a node's desired models and their state")
    s.add_argument("node")
    for name, what in (("load", "load a model (or keep it loaded)"), ("unload", "unload it")):
        s = sub.add_parser(name, parents=[common], help=what)
        s.add_argument("node")
        s.add_argument("model")
        s.add_argument("--server", default="", help="replica name on the node, e.g. vllm-8000")
        s.add_argument("--version", default="", help="version to publish for the model")
        if name == "load":
            s.add_argument("--path", default="", help="vLLM: the LoRA adapter's path")
            s.add_argument("--keep-alive", default="-1", help="Ollama: keep_alive (-1: forever)")
    s = sub.add_parser("forget", parents=[common], help="stop managing a model on a node")
    s.add_argument("node")
    s.add_argument("model")
    s = sub.add_parser("pin", parents=[common], help="keep N replicas of a model resident")
    s.add_argument("model")
    s.add_argument("--min", type=int, required=True, help="replicas never slept or unloaded")
    s.add_argument("--region", default="", help="for this region only (default: every region)")
    s.add_argument("--max-replicas", type=int, default=None, help="at most this many in all")
    s.add_argument("--priority", type=int, default=None, help="GPU memory goes to higher first")
    s.add_argument("--fallback", default=None, help="answer with this model while none is ready")
    s = sub.add_parser("unpin", parents=[common], help="forget a model's pins and bounds")
    s.add_argument("model")
    sub.add_parser("placement", parents=[common], help="pins, and placement's last decision")


def run(args: argparse.Namespace) -> int:
    return run_cli("aixds models", _run, args)


def _run(args: argparse.Namespace) -> int:
    if args.action in ("pin", "unpin", "placement"):
        return _placement(args)
    node = quote(args.node, safe="")
    if args.action == "list":
        doc = call_api(args, "GET", f"/v1/nodes/{node}/models")
        print(json.dumps(doc, indent=2) if args.json else format_models(doc))
        return 0
    path = f"/v1/nodes/{node}/models/{quote(args.model, safe='/')}"
    if args.action == "forget":
        doc = call_api(args, "DELETE", path)
        print(json.dumps(doc) if args.json else ("forgotten" if doc["removed"] else "no entry"))
        return 0
    body: dict[str, Any] = {"state": "loaded" if args.action == "load" else "unloaded"}
    for key in ("server", "version", "path", "keep_alive"):
        value = getattr(args, key, "")
        if value and not (key == "keep_alive" and value == "-1"):
            body[key] = value
    doc = call_api(args, "PUT", path, body)
    print(json.dumps(doc, indent=2) if args.json else _line(doc))
    return 0


def _placement(args: argparse.Namespace) -> int:
    if args.action == "placement":
        doc = call_api(args, "GET", "/v1/placement")
        print(json.dumps(doc, indent=2) if args.json else format_placement(doc))
        return 0
    path = "/v1/placement/" + quote(args.model, safe="/")
    if args.action == "unpin":
        doc = call_api(args, "DELETE", path)
    else:
        current = call_api(args, "GET", "/v1/placement")
        have: dict[str, Any] = next((p for p in current["pinned"] if p["model"] == args.model), {})
        body: dict[str, Any] = {
            "min_resident": {**have.get("min_resident", {}), args.region: args.min},
            "max_replicas": have.get("max_replicas", 0),
            "priority": have.get("priority", 0),
            "fallback": have.get("fallback", ""),
        }
        for key in ("max_replicas", "priority", "fallback"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        doc = call_api(args, "PUT", path, body)
    print(json.dumps(doc, indent=2) if args.json else format_placement(doc))
    return 0


def format_placement(doc: dict[str, Any]) -> str:
    """``GET /v1/placement`` (or a write's answer) as lines for a terminal."""
    lines = [f"placement (intent revision {doc['revision']}):"]
    for p in doc["pinned"]:
        where = ", ".join(
            f"{n} in {r or 'every region'}" for r, n in sorted(p["min_resident"].items())
        )
        extra = [f"pinned {where or 'nowhere'}"]
        if p["max_replicas"]:
            extra.append(f"at most {p['max_replicas']}")
        if p["priority"]:
            extra.append(f"priority {p['priority']}")
        if p["fallback"]:
            extra.append(f"fallback {p['fallback']}")
        lines.append(f"  {p['model']}: {', '.join(extra)}")
    decision = doc.get("decision")
    if not decision:
        lines.append("  no decision yet (no control plane acting for placement)")
        return "\n".join(lines)
    lines.append(f"decided by {decision['decided_by']}:")
    for m, d in decision["models"].items():
        awake, asleep = len(d["awake"]), len(d["sleeping"])
        line = f"  {m}: {awake} awake, {asleep} asleep"
        if d["unplaced"]:
            line += f", {d['unplaced']} could not be placed"
        if d["waiting"]:
            line += f", {d['waiting']} requests waiting"
        lines.append(line)
        f = d.get("forecast")
        if f:
            lines.append(
                f"    forecast: {f['reason']} (keep-alive {f['keep_alive_s']:g} s, pre-warm"
                f" {f['prewarm_s']:g} s, {f['recent_rps']:g} req/s now)"
            )
        lines.extend(f"    {r}" for r in d["reasons"])
    nodes = decision.get("nodes") or {}  # absent in a decision written before it was kept
    if nodes:
        lines.append("memory per node (GPU: models loaded or loading; host: servers asleep):")
    for node, n in nodes.items():
        host = f"{_gib(n['host_used_bytes'])}/{_gib(n['host_bytes'])} GiB"
        lines.append(
            f"  {node}: GPU {_gib(n['gpu_used_bytes'])}/{_gib(n['gpu_bytes'])} GiB, "
            f"host {host} ({'from its agent' if n['host_from'] == 'agent' else 'ratio'})"
        )
    return "\n".join(lines)


def _gib(b: float | None) -> str:
    return "?" if b is None else f"{b / (1 << 30):.0f}"


def format_models(doc: dict[str, Any]) -> str:
    """``GET /v1/nodes/{node}/models`` as lines for a terminal."""
    if not doc["models"]:
        return f"node {doc['node']}: no desired models"
    return "\n".join([f"node {doc['node']}:", *(_line(m) for m in doc["models"])])


def _line(m: dict[str, Any]) -> str:
    want = f"{m['model']} {m['state']}"
    if m["server"]:
        want += f" on {m['server']}"
    if m["version"]:
        want += f" as {m['version']}"
    seen = ", ".join(f"{o['replica']} {o['version']} {o['state']}" for o in m["observed"])
    line = f"  {want}: {seen or 'not on the node'}"
    if m.get("error"):
        line += f"\n    ignored by the agent: {m['error']}"
    for f in m["failures"]:
        line += f"\n    {f['op']} on {f['replica']} {failed(f)}"
    return line


def failed(f: dict[str, Any]) -> str:
    """One reported load/unload failure's outcome: attempts, whether it retries, why."""
    retry = "will not retry until the desired entry changes" if f["permanent"] else "retrying"
    return f"failed {f['failures']}x ({retry}): {f['error']}"
