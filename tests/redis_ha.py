"""Test support: Redis with Sentinel, as real processes on free ports of 127.0.0.1.

``SentinelGroup`` starts a primary redis-server, a replica of it and three Sentinels
(``redis-server CONF --sentinel``) watching them with a short ``down-after-milliseconds``,
and waits until every Sentinel knows the replica and the other two Sentinels, so that a
failover can happen. Every process goes through ``tests.support.Proc`` and is killed at
``stop()`` (and at the end of the session if a test forgot).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support import Proc, RedisServer, free_port, wait_until

SERVICE = "aixds"
"""The name the Sentinels monitor the primary under (the URL's ``/SERVICE``)."""


class SentinelGroup:
    """A primary, one replica and three Sentinels (quorum 2)."""

    def __init__(
        self, tmp: Path, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found: run `make test` (it installs it)")
        self.tmp = tmp
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self.sentinels: list[Proc] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelGroup:
        # No wait before a full sync (Redis waits 5 s for more replicas by default).
        fast_sync = ("--repl-diskless-sync-delay", "0")
        primary = self._server("primary", fast_sync)
        replica = self._server(
            "replica", (*fast_sync, "--replicaof", "127.0.0.1", str(primary.port))
        )
        wait_until(
            lambda: self._info(replica.port, "replication").get("master_link_status") == "up",
            10,
            what="the replica to sync with the primary",
        )
        for i in range(3):
            self._start_sentinel(i, primary.port)
        wait_until(self._ready, 30, interval=0.2, what="Sentinels to find the replica and peers")
        return self

    def _start_sentinel(self, i: int, primary_port: int) -> None:
        """Sentinel ``i`` on a free port; another port if that one was taken meanwhile."""
        exe = shutil.which("redis-server")
        assert exe is not None
        for _ in range(5):
            port = free_port()
            conf = self.tmp / f"sentinel-{i}.conf"  # Sentinel rewrites it: one per process
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {self.tmp}",
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                        f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                        f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                        f"sentinel parallel-syncs {SERVICE} 1",
                        "",
                    ]
                )
            )
            proc = Proc(f"sentinel-{i}", [exe, str(conf), "--sentinel"], self.tmp / f"s{i}.log")
            if self._came_up(proc.start(), port):
                self.sentinels.append(proc)
                self.sentinel_ports.append(port)
                return
            proc.stop()
        raise RuntimeError(f"Sentinel {i} did not start: see {self.tmp / f's{i}.log'}")

    @staticmethod
    def _came_up(proc: Proc, port: int) -> bool:
        """Until ``proc`` answers as a Sentinel on ``port`` (True), or dies or another
        process has the port (False)."""
        deadline = time.monotonic() + 10
        while proc.alive() and time.monotonic() < deadline:
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(port=port, decode_responses=True, socket_timeout=1) as r,
            ):
                info = r.info("server")
                if info.get("redis_mode") == "sentinel":
                    return bool(info.get("process_id") == proc.pid)  # ours, not a squatter
            time.sleep(0.05)
        return False

    def _server(self, name: str, args: tuple[str, ...]) -> RedisServer:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        srv = RedisServer(d, args)
        srv.start()
        self.servers.append(srv)
        return srv

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as s:
                m = s.sentinel_master(SERVICE)
                if int(m["num-slaves"]) != 1 or int(m["num-other-sentinels"]) != 2:
                    return False
        return True

    @staticmethod
    def _info(port: int, section: str) -> dict[str, object]:
        with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as r:
            return dict(r.info(section))

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the Sentinels report it now."""
        seen: list[int] = []
        for port in self.sentinel_ports:
            with (
                contextlib.suppress(redis.RedisError),
                redis.Redis(port=port, decode_responses=True, socket_timeout=1) as s,
            ):
                addr = s.sentinel_get_master_addr_by_name(SERVICE)
                if addr:
                    seen.append(int(addr[1]))
        for p in set(seen):
            if seen.count(p) >= 2:
                return p
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def kill_primary(self) -> tuple[int, float]:
        """``kill -9`` the current primary; its port and the time (``time.time()``)."""
        srv = self.primary()
        assert srv.proc is not None
        at = time.time()
        srv.proc.kill(signal.SIGKILL)
        return srv.port, at

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> float:
        """Until a majority of Sentinels name a new primary that answers as one; when."""

        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old_port:
                return False
            return self._info(port, "replication").get("role") == "master"

        wait_until(promoted, timeout, interval=0.05, what="Sentinel to promote the replica")
        return time.time()

    def stop(self) -> None:
        for p in reversed(self.sentinels):
            p.stop()
        for s in reversed(self.servers):
            s.stop()


@contextlib.contextmanager
def sentinel_group(tmp: Path, **kw: int) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp, **kw)
    try:
        yield group.start()
    finally:
        group.stop()
