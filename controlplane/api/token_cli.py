"""``aixds token``: make a new API token and its tokens-file entry, or hash a token.

``new NAME --scope S`` prints a random token (give it to NAME; it is stored nowhere) and
the entry to add to the tokens file, which holds only the token's SHA-256. ``hash`` prints
the SHA-256 of the token read from stdin (for a token made elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys

from controlplane.api.tokens import NAME_RE, Scope, digest, new_token

EXAMPLES = """\
examples:
  aixds token new alice --scope admin     # then add the entry to tokens.yaml
  aixds token new grafana --scope read
  printf %s "$TOKEN" | aixds token hash   # same as: printf %s "$TOKEN" | sha256sum
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    n = sub.add_parser("new", help="a random token and its tokens-file entry")
    n.add_argument("name", type=_name, help="who holds it (shown in the audit log)")
    n.add_argument(
        "--scope",
        required=True,
        choices=[s.label for s in Scope],
        help="read: GET only; operate: + drains, models, fault clears; admin: + rollouts, "
        "placement, affinity",
    )
    sub.add_parser("hash", help="the SHA-256 (hex) of the token on stdin")


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise argparse.ArgumentTypeError("1-64 of A-Z a-z 0-9 _ . @ - (no ':')")
    return v


def run(args: argparse.Namespace) -> int:
    if args.action == "hash":
        token = sys.stdin.read().strip("\r\n")
        if not token:
            print("aixds token hash: no token on stdin", file=sys.stderr)
            return 2
        print(digest(token).hex())
        return 0
    token = new_token()
    print(f"# token for {args.name} (scope {args.scope}); it is not stored anywhere:")
    print(token)
    print("# its entry for the tokens file (--tokens-file), which holds only the hash:")
    name = json.dumps(args.name)
    print(f"- {{name: {name}, sha256: {digest(token).hex()}, scopes: [{args.scope}]}}")
    return 0
