"""Token parsing and lookup (``api.tokens``): formats, scopes, clear errors, hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from controlplane.api.tokens import (
    LEGACY_NAME,
    Scope,
    TokensError,
    TokenTable,
    load_tokens,
    new_token,
    parse_tokens,
)

ALICE = "alice-admin-token-0123456789"
GRAFANA = "grafana-read-token-0123456789"
CI = "ci-operate-token-0123456789"


def sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


def test_a_file_with_plain_and_hashed_tokens(tmp_path: Path) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(
        f"""
tokens:
  - name: alice
    sha256: {sha(ALICE).upper()}
    scopes: [admin]
  - name: grafana
    token: {GRAFANA}
    scopes: [read]
  - {{name: ci, sha256: {sha(CI)}, scopes: [read, operate]}}
"""
    )
    table = load_tokens(file=f)
    assert [(t.name, t.scope) for t in table.tokens] == [
        ("alice", Scope.ADMIN),
        ("grafana", Scope.READ),
        ("ci", Scope.OPERATE),  # the highest scope listed
    ]
    found = table.find(ALICE)
    assert found is not None and found.name == "alice"
    ci = table.find(CI)
    assert ci is not None and ci.name == "ci"
    assert table.find("nope") is None and table.find("") is None
    assert table.find(sha(ALICE)) is None  # the hash is not the token
    assert table.best() == Scope.ADMIN


def test_json_in_the_environment_and_the_legacy_token_add_up(tmp_path: Path) -> None:
    env = f'[{{"name": "ci", "token": "{CI}", "scopes": ["operate"]}}]'
    table = load_tokens(api_token="tok", env_text=env)
    assert [(t.name, t.scope) for t in table.tokens] == [
        (LEGACY_NAME, Scope.ADMIN),
        ("ci", Scope.OPERATE),
    ]
    legacy = table.find("tok")  # --api-token keeps its old meaning, whatever its length
    assert legacy is not None and legacy.scope == Scope.ADMIN
    assert len(load_tokens()) == 0 and load_tokens().best() is None


def test_scopes_include_the_lower_ones() -> None:
    assert Scope.ADMIN > Scope.OPERATE > Scope.READ
    assert [s.label for s in Scope] == ["read", "operate", "admin"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{tokens: 3}", "expected a list"),
        ("- just-a-string", "must be a mapping"),
        ("- {name: a, token: " + CI + ", scopes: [read], extra: 1}", "unknown keys ['extra']"),
        ("- {token: " + CI + ", scopes: [read]}", "name must be"),
        ("- {name: 'controlplane:auto-rollback', token: " + CI + ", scopes: [read]}", "no ':'"),
        ("- {name: a, scopes: [read]}", "exactly one of 'token' and 'sha256'"),
        ("- {name: a, token: " + CI + ", sha256: " + sha(CI) + ", scopes: [read]}", "exactly one"),
        ("- {name: a, token: short, scopes: [read]}", "at least 16 characters"),
        ("- {name: a, sha256: abc, scopes: [read]}", "64 hex digits"),
        ("- {name: a, token: " + CI + "}", "non-empty list"),
        ("- {name: a, token: " + CI + ", scopes: []}", "non-empty list"),
        ("- {name: a, token: " + CI + ", scopes: [write]}", "unknown scope 'write'"),
        (
            f"- {{name: a, token: {CI}, scopes: [read]}}\n- {{name: a, token: {ALICE}, "
            "scopes: [read]}",
            "unique: a (tokens.yaml), a (tokens.yaml) have the same name",
        ),
        (
            f"- {{name: a, token: {CI}, scopes: [read]}}\n- {{name: b, sha256: {sha(CI)}, "
            "scopes: [admin]}",
            "a (tokens.yaml), b (tokens.yaml) are the same token",
        ),
        ("- [unclosed", "not YAML/JSON"),
    ],
)
def test_what_does_not_fit_is_refused_saying_where(text: str, says: str) -> None:
    with pytest.raises(TokensError) as e:
        TokenTable(parse_tokens(text, "tokens.yaml"))
    assert says in str(e.value) and "tokens.yaml" in str(e.value)


def test_a_missing_file_and_an_empty_one(tmp_path: Path) -> None:
    with pytest.raises(TokensError, match=r"--tokens-file .*nope\.yaml"):
        load_tokens(file=tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert len(load_tokens(file=tmp_path / "empty.yaml")) == 0


def test_legacy_token_and_a_file_token_may_not_be_the_same() -> None:
    with pytest.raises(TokensError, match=r"api-token \(--api-token\), ci \(AIXDS_API_TOKENS\)"):
        load_tokens(api_token=CI, env_text=f"- {{name: ci, token: {CI}, scopes: [operate]}}")


def test_new_tokens_are_long_and_different() -> None:
    a, b = new_token(), new_token()
    assert a != b and len(a) >= 40
