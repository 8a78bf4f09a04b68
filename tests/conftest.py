"""Shared fixtures. First, before anything imports grpc: no gRPC fork handlers.

The test process runs gRPC servers and clients in threads and also starts children
(``subprocess.Popen`` with a ``preexec_fn``, so a real fork before the exec). With fork
support on (grpcio's default here), gRPC's ``pthread_atfork`` handlers run in every such
child; with other threads inside gRPC they were seen to fail (``epoll_wait error: Bad file
descriptor``) and the child never reached its exec (an Envoy runner that never started,
in CI). The children exec at once and never use the parent's gRPC, so the handlers have
nothing to do: ``GRPC_ENABLE_FORK_SUPPORT=0``.
"""

from __future__ import annotations

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"

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
