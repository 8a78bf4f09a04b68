"""Issue 13 item 4 end to end: scoped tokens and the audit log on a real ``aixds serve``
(real Redis, a fake vLLM server and its agent), driven through the ``aixds`` CLI.

A drain by the operate token shows in ``aixds audit`` under that token's name; a read
token may read but not drain; with ``--require-read-token`` nothing reads without a token
(``/healthz`` aside); a bad tokens file stops ``aixds serve`` with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.fleet import Fleet
from tests.support import Procs, RedisServer, wait_until

pytestmark = pytest.mark.e2e

OPS = "ops-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


def tokens_file(path: Path) -> Path:
    admin_sha = hashlib.sha256(ADMIN.encode()).hexdigest()
    path.write_text(
        f"""\
tokens:
  - {{name: ops-oncall, token: {OPS}, scopes: [operate]}}
  - {{name: release-bot, sha256: {admin_sha}, scopes: [admin]}}
  - {{name: grafana, token: {READ}, scopes: [read]}}
"""
    )
    return path


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve(
        "--tokens-file", str(tokens_file(tmp_path / "tokens.yaml")), "--require-read-token"
    )
    yield f


def aixds(*args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXDS_API")}
    if token is not None:
        env["AIXDS_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_cli_drain_is_in_the_audit_log_under_the_tokens_name(fleet: Fleet) -> None:
    rep = fleet.add_replica(agent=True)
    api = ("--api", fleet.api)
    read = {"authorization": f"Bearer {READ}"}

    def listed() -> bool:
        r = httpx.get(f"{fleet.api}/v1/fleet", headers=read, timeout=5)
        return any(x["replica_id"] == rep.replica_id for x in r.json()["replicas"])

    wait_until(listed, 15, what="replica in the fleet view")
    assert httpx.get(f"{fleet.api}/v1/fleet", timeout=5).status_code == 401
    health = httpx.get(f"{fleet.api}/healthz", timeout=5).json()  # open to probes
    assert health["reads_need_token"] is True and health["writes_enabled"] is True

    p = aixds("drain", rep.node, *api, token=READ)
    assert p.returncode == 1 and "403 insufficient_scope" in p.stderr, p.stderr
    assert "needs scope operate" in p.stderr
    p = aixds("drain", rep.node, *api, token=OPS)
    assert p.returncode == 0, p.stderr
    assert f"node {rep.node}: {rep.replica_id}" in p.stdout
    p = aixds("drain", "--undo", rep.node, *api, token=ADMIN)  # admin may operate too
    assert p.returncode == 0, p.stderr
    p = aixds("affinity", "llama", "off", *api, token=OPS)
    assert p.returncode == 1 and "needs scope admin" in p.stderr, p.stderr
    p = aixds("affinity", "llama", "off", *api, token=ADMIN)
    assert p.returncode == 0, p.stderr

    p = aixds("audit", *api, token=None)
    assert p.returncode == 1 and "401 unauthorized" in p.stderr, p.stderr
    p = aixds("audit", *api, token=READ)
    assert p.returncode == 0, p.stderr
    print(p.stdout)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["TIME", "WHO", "ACTION", "TARGET", "CHANGE"]
    drain_line = next(ln for ln in lines if " drain " in ln)
    assert drain_line.split()[2:6] == ["ops-oncall", "drain", rep.node, "drained:"]
    assert drain_line.endswith(f'drained: [] -> ["{rep.node}"]')
    assert any(ln.split()[2:5] == ["release-bot", "undrain", rep.node] for ln in lines)
    assert any(ln.split()[2:5] == ["release-bot", "affinity", "llama"] for ln in lines)

    p = aixds("audit", "--json", "--limit", "1", *api, token=READ)
    assert p.returncode == 0, p.stderr
    (last,) = json.loads(p.stdout)["entries"]
    assert (last["who"], last["action"], last["target"]) == ("release-bot", "affinity", "llama")
    assert (last["old"], last["new"]) == (
        {"affinity": {"llama": None}},
        {"affinity": {"llama": False}},
    )
    assert last["request_id"] and last["revision"] > 0

    p = aixds("status", *api, token=None)
    assert p.returncode == 1 and "needs a token with scope read" in p.stderr, p.stderr
    p = aixds("status", *api, token=READ)
    assert p.returncode == 0 and "replicas: 1" in p.stdout and "stable v1" in p.stdout, p.stderr


def test_serve_refuses_a_bad_tokens_file_and_read_token_without_tokens(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: ci, token: short, scopes: [operate]}\n")
    serve = ("serve", "--redis", redis_srv.url, "--xds", "127.0.0.1:1", "--api", "127.0.0.1:1")
    p = aixds(*serve, "--tokens-file", str(bad), token=None)
    assert p.returncode == 2, p.stderr
    assert f"aixds serve: {bad}: tokens[0] (ci): token must be a string of at least 16" in (
        p.stderr
    )
    p = aixds(*serve, "--require-read-token", token=None)
    assert p.returncode == 2 and "--require-read-token needs at least one token" in p.stderr
