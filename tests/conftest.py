from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Procs, RedisServer, kill_leftovers, redis_server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite tests/golden/out from the builders"
    )


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as srv:
        yield srv


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(p.dump_logs())
        p.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    n = kill_leftovers()
    if n:
        print(f"\nkilled {n} process(es) that tests left running")
