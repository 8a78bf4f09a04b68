"""``aixds audit``'s table and ``aixds token``: pure formatting, and a new token's entry
that the tokens parser reads back to the same token."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from controlplane.api.audit_cli import describe, format_audit
from controlplane.api.tokens import Scope, TokenTable, parse_tokens


def test_describe_names_each_changed_part() -> None:
    assert describe({"drained": []}, {"drained": ["gpu-1"]}) == 'drained: [] -> ["gpu-1"]'
    old = {"rollouts": {"llama": {"canary": "v2", "canary_percent": 10.0}}}
    new = {"rollouts": {"llama": {"canary": "", "canary_percent": 0.0}}}
    assert describe(old, new) == (
        'rollouts.llama.canary: "v2" -> ""; rollouts.llama.canary_percent: 10.0 -> 0.0'
    )
    assert describe(None, {"server": "a"}) == 'null -> {"server":"a"}'
    long = describe(None, {"x": "y" * 100})
    assert long.startswith('null -> {"x":"yyy') and long.endswith("...") and len(long) < 80


def test_the_table_lines_up() -> None:
    entries = [
        {"at": 0, "who": "ci", "action": "drain", "target": "n1",
         "old": {"d": []}, "new": {"d": [1]}},
        {"at": 0, "who": "controlplane:auto-rollback", "action": "rollback", "target": "llama",
         "old": {"c": "v2"}, "new": {"c": ""}},
    ]  # fmt: skip
    lines = format_audit(entries).splitlines()
    assert lines[0].split() == ["TIME", "WHO", "ACTION", "TARGET", "CHANGE"]
    for column, value in (("ACTION", "drain"), ("TARGET", "n1"), ("CHANGE", "d:")):
        assert lines[0].index(column) == lines[1].index(value)
    assert lines[2].split()[2:6] == ["controlplane:auto-rollback", "rollback", "llama", "c:"]
    assert lines[2].endswith('c: "v2" -> ""')
    assert format_audit([]) == "no changes recorded"


def test_a_new_tokens_entry_reads_back_to_that_token() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "controlplane", "token", "new", "bob", "--scope", "operate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    comment, token, _, entry = p.stdout.splitlines()
    assert "bob" in comment and "operate" in comment
    table = TokenTable(parse_tokens(entry, "pasted"))
    found = table.find(token)
    assert found is not None and (found.name, found.scope) == ("bob", Scope.OPERATE)
    assert token not in entry
    h = subprocess.run(
        [sys.executable, "-m", "controlplane", "token", "hash"],
        input=token,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert h.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()
