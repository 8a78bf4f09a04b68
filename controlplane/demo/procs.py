"""Local process groups for the demo and the benchmarks: start, wait for ports, stop all.

Each child runs in its own session so it (and anything it spawns) is killed as a group;
``stop_all`` stops children in reverse start order and is safe to call twice. A child gets
SIGTERM from the kernel if this process dies without stopping it (``kill -9``; Linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.proc_guard import die_with_parent, raise_if_stopped


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raise_if_stopped()
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)


@dataclass
class ProcessGroup:
    """Children started by one demo or benchmark run; logs go to ``log_dir``."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        child = Child(name, popen, list(argv))
        self.children.append(child)
        raise_if_stopped()  # a stop signal that came during the fork may have raised nothing
        return child

    def kill(self, child: Child) -> None:
        """SIGKILL ``child`` (and its group) and reap it: a crash, for the demo's region loss."""
        child.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(5)

    def restart(self, child: Child) -> Child:
        """Start ``child``'s command again under its name (log appended); the old entry is
        replaced, so ``stop_all`` stops the new process."""
        if child.alive():
            raise RuntimeError(f"{child.name} is still running")
        new = self.start(child.name, child.argv)
        self.children.remove(new)
        self.children[self.children.index(child)] = new
        return new

    def aixds(self, name: str, *args: str) -> Child:
        return self.start(name, [sys.executable, "-m", "controlplane", *args])

    def fake_llm(self, name: str, port: int, model: str, replica_id: str, *args: str) -> Child:
        """A fake vLLM on 127.0.0.1:``port`` serving ``model`` v1 (``args``: more flags)."""
        listen = f"127.0.0.1:{port}"
        return self.aixds(
            name, "fake-llm", "--listen", listen, "--model", model, "--version", "v1",
            "--replica-id", replica_id, *args,
        )  # fmt: skip

    def agent(self, node: str, redis_url: str, region: str, zone: str, *args: str) -> Child:
        """The agent of ``node`` with a simulated GPU (``args``: its servers, more flags)."""
        return self.aixds(
            f"agent-{node}", "agent", "--redis", redis_url, "--node", node,
            "--region", region, "--zone", zone, "--gpu", "sim", *args,
        )  # fmt: skip

    def redis(self, port: int, name: str = "redis", *, replica_of: int | None = None) -> Child:
        """A redis-server on ``port`` keeping nothing on disk, in its own directory (a
        replica's full sync writes an RDB file there); ``replica_of``: a replica of the
        Redis on that port."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install -y redis-server) "
                "or run `make demo`, which does"
            )
        workdir = self.log_dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir)]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        child = self.start(name, argv)
        wait_port(port)
        return child

    def stop_all(self, timeout: float = 5.0) -> None:
        for child in reversed(self.children):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
                child.popen.wait(5)
        self.children.clear()
