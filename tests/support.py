"""Test support: free ports, a real redis-server, and process management.

Every process started here binds to 127.0.0.1 and is killed (with its process group) when
the test ends, even when the test fails, and gets SIGTERM from the kernel if the test
process itself dies (``controlplane.proc_guard``; Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from controlplane.proc_guard import die_with_parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    pred: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception as e:  # the thing we wait for may not be up yet
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or pred}: {last_exc!r}")


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """``wait_until`` for async checks, inside a test's event loop."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as e:  # e.g. Redis down on purpose
            last = e
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met in {within}s (last error: {last!r})")


def wait_port(port: int, timeout: float = 10.0) -> None:
    def up() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, timeout, what=f"port {port}")


_ALL: list[Proc] = []
"""Every process any test started: killed at session end whatever happened."""


def kill_leftovers() -> int:
    n = 0
    for p in _ALL:
        if p.alive():
            p.kill()
            n += 1
    _ALL.clear()
    return n


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Proc:
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        fh.close()
        _ALL.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Procs:
    """Starts processes and stops all of them (reverse order) at the end of a test."""

    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, argv, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p.start(env)

    def aixds(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, [sys.executable, "-m", "controlplane", *args], env)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.tail()}" for p in self.procs)


class RedisServer:
    """A real redis-server on a free port, which a test may stop and restart.

    ``args`` are added to its command line on every start (e.g. ``--replicaof``).
    """

    def __init__(self, tmp: Path, args: tuple[str, ...] = ()) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.exe = exe
        self.port = free_port()
        self.tmp = tmp
        self.args = args
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = Proc(
            "redis",
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
                *self.args,
            ],
            self.tmp / "redis.log",
        ).start()
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            assert self.proc.popen is not None
            self.proc.popen.wait(5)
            self.proc = None


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode("latin-1")
    except OSError:
        return None
    state, ppid = raw[raw.rfind(")") + 2 :].split()[:2]
    return int(ppid), state


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait a while to be reaped)."""
    st = _ppid_and_state(pid)
    return st is not None and st[1] not in "ZX"


def catches(pid: int, sig: int) -> bool:
    """``pid`` has installed a handler for ``sig`` (``SigCgt`` in ``/proc/PID/status``).

    A program that opens its ports before it installs its signal handlers dies of the
    default action if a signal comes in between: wait for this before signalling it.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (Linux ``/proc``), at this moment."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _ppid_and_state(int(name))) is not None:
            children.setdefault(st[0], []).append(int(name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return {pid for pid in out if alive(pid)}


def envoy_admin_get(admin_port: int, path: str, timeout: float = 2.0) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{admin_port}{path}", timeout=timeout)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
