"""Fixtures of the integration tests: a Redis primary and its replica (replicated intent)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import RedisServer

FAST_SYNC = ("--repl-diskless-sync-delay", "0")
"""Redis waits 5 s before a full sync by default; tests do not."""


@dataclass
class Pair:
    home: RedisServer
    replica: RedisServer


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    (tmp_path / "us").mkdir()
    (tmp_path / "eu").mkdir()
    home = RedisServer(tmp_path / "us", FAST_SYNC)
    home.start()
    replica = RedisServer(tmp_path / "eu", (*FAST_SYNC, "--replicaof", "127.0.0.1", str(home.port)))
    try:
        replica.start()
        yield Pair(home, replica)
    finally:
        replica.stop()
        home.stop()
