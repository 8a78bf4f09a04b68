"""API tokens with scopes: what a bearer token may do, and whose it is.

Three scopes, each including the ones before it (``admin`` ⊇ ``operate`` ⊇ ``read``):

- ``read``: every ``GET`` (open to anyone unless ``aixds serve --require-read-token``);
- ``operate``: day-to-day operations: drains, loading and unloading models, clearing
  GPU faults;
- ``admin``: rollouts, model placement (pins, bounds, fallback) and session affinity.

Tokens come from ``--api-token``/``AIXDS_API_TOKEN`` (one admin token named
``api-token``, as before scopes existed), a tokens file (``--tokens-file``) and the
``AIXDS_API_TOKENS`` variable, both in the same YAML/JSON form::

    tokens:
      - name: alice                # the "who" of the audit log
        sha256: 9f86d08...         # hex SHA-256 of the token (the file holds no secret)
        scopes: [admin]
      - name: grafana
        token: a-long-random-read-only-token
        scopes: [read]

Only SHA-256 digests are kept in memory; a presented token is hashed and compared with
every digest in constant time (``hmac.compare_digest``, no early exit). Pure: no I/O
but reading the file in ``load_tokens``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LEGACY_NAME = "api-token"
"""The name ``--api-token``/``AIXDS_API_TOKEN`` is known by (in the audit log)."""
MIN_TOKEN_CHARS = 16
"""Shortest plain token a tokens file or ``AIXDS_API_TOKENS`` may hold."""
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
"""Token names: no ``:``, so none can pass for ``controlplane:...`` in the audit log."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Scope(enum.IntEnum):
    """What a token may do; a higher scope includes every lower one."""

    READ = 1
    OPERATE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class TokensError(ValueError):
    """A tokens file or ``AIXDS_API_TOKENS`` that does not fit; the message says where."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    digest: bytes
    """SHA-256 of the token."""
    scope: Scope
    source: str = ""
    """Where it was configured (``--api-token``, a file's path, ``AIXDS_API_TOKENS``)."""


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


class TokenTable:
    """Every known token; ``find`` is constant-time in the presented token."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self.tokens: tuple[Token, ...] = tuple(tokens)
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TokensError(
                f"token names must be unique: {self._where(lambda t: t.name in dup)} "
                "have the same name"
            )
        digests = [t.digest for t in self.tokens]
        if len(set(digests)) != len(digests):
            raise TokensError(
                f"{self._where(lambda t: digests.count(t.digest) > 1)} are the same token: "
                "give each its own"
            )

    def _where(self, pick: Callable[[Token], bool]) -> str:
        return ", ".join(f"{t.name} ({t.source})" for t in self.tokens if pick(t))

    def __len__(self) -> int:
        return len(self.tokens)

    def find(self, presented: str) -> Token | None:
        """The token ``presented`` is, or None; looks at every entry whatever matches."""
        d = digest(presented)
        found: Token | None = None
        for t in self.tokens:
            if hmac.compare_digest(d, t.digest):
                found = t
        return found

    def best(self) -> Scope | None:
        """The highest scope any token has (None: no token at all)."""
        return max((t.scope for t in self.tokens), default=None)


def load_tokens(*, api_token: str = "", file: Path | None = None, env_text: str = "") -> TokenTable:
    """Every token of the three sources; ``TokensError`` names the source that is wrong."""
    tokens: list[Token] = []
    if api_token:
        tokens.append(Token(LEGACY_NAME, digest(api_token), Scope.ADMIN, "--api-token"))
    if file is not None:
        try:
            text = file.read_text()
        except OSError as e:
            raise TokensError(f"--tokens-file {file}: {e.strerror or e}") from None
        tokens += parse_tokens(text, str(file))
    if env_text.strip():
        tokens += parse_tokens(env_text, "AIXDS_API_TOKENS")
    return TokenTable(tokens)


def parse_tokens(text: str, where: str) -> list[Token]:
    """A tokens document (see the module docstring): a list, or ``{tokens: [...]}``."""
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TokensError(f"{where}: not YAML/JSON: {e}") from None
    if isinstance(doc, dict) and set(doc) == {"tokens"}:
        doc = doc["tokens"]
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise TokensError(f"{where}: expected a list of tokens (or 'tokens: [...]')")
    return [_entry(e, where, i) for i, e in enumerate(doc)]


def _entry(e: Any, source: str, i: int) -> Token:
    where = f"{source}: tokens[{i}]"
    if not isinstance(e, dict):
        raise TokensError(f"{where} must be a mapping {{name, token or sha256, scopes}}")
    unknown = set(e) - {"name", "token", "sha256", "scopes"}
    if unknown:
        raise TokensError(f"{where}: unknown keys {sorted(unknown)}")
    name = e.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise TokensError(
            f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . @ - (no ':'), got {name!r}"
        )
    where = f"{where} ({name})"
    if ("token" in e) == ("sha256" in e):
        raise TokensError(f"{where}: give exactly one of 'token' and 'sha256'")
    if "token" in e:
        tok = e["token"]
        if not isinstance(tok, str) or len(tok) < MIN_TOKEN_CHARS or tok != tok.strip():
            raise TokensError(
                f"{where}: token must be a string of at least {MIN_TOKEN_CHARS} characters "
                "without surrounding spaces (`aixds token new` makes one)"
            )
        d = digest(tok)
    else:
        hexd = e["sha256"]
        if not isinstance(hexd, str) or not _HEX64.fullmatch(hexd.lower()):
            raise TokensError(
                f"{where}: sha256 must be 64 hex digits "
                '(printf %s "$TOKEN" | sha256sum, or `aixds token hash`)'
            )
        d = bytes.fromhex(hexd)
    return Token(name, d, _scope(e.get("scopes"), where), source)


def _scope(raw: Any, where: str) -> Scope:
    names = ", ".join(s.label for s in Scope)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise TokensError(f"{where}: scopes must be a non-empty list of {names}")
    out: list[Scope] = []
    for s in raw:
        if not isinstance(s, str) or s.upper() not in Scope.__members__:
            raise TokensError(f"{where}: unknown scope {s!r}; scopes are {names}")
        out.append(Scope[s.upper()])
    return max(out)
