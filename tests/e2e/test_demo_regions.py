"""``aixds demo --regions 3``: three regions, each with its own Redis and control plane;
losing one (its Redis, model servers and agents, kill -9) moves its edge's traffic to the
nearest region, and restoring it brings the traffic back. Read from the demo's own screen
and its control endpoint, as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import wait_until

pytestmark = pytest.mark.e2e

CLEAR = "\x1b[2J\x1b[H"


class Screens:
    """The demo's stdout, split into the screens it draws every second."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(256), ""):  # type: ignore[union-attr]
            with self._lock:
                self.text += chunk

    def complete(self) -> list[str]:
        with self._lock:
            return self.text.split(CLEAR)[1:-1]  # the last one may be half written

    def last(self) -> str:
        screens = self.complete()
        return screens[-1] if screens else ""

    def region_line(self, region: str, screen: str | None = None) -> str:
        """The region's line under "regions" (not a replica row, which starts alike), in
        ``screen`` (default: the last)."""
        line = re.compile(rf"^\s+{re.escape(region)}\s+(UP|LOST)\s")
        text = self.last() if screen is None else screen
        return next((ln for ln in text.splitlines() if line.match(ln)), "")


def errors_resumed(line: str) -> tuple[int, int]:
    """``errors 0, streams resumed 5`` -> (0, 5)."""
    m = re.search(r"errors (\d+), streams resumed (\d+)", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def served_from(line: str) -> dict[str, int]:
    """``edge served from: eu-west 100%, us-east 0%`` -> {region: percent}."""
    m = re.search(r"edge served from: ([^;]*);", line)
    if not m or m.group(1) == "-":
        return {}
    return {r: int(p.rstrip("%")) for r, p in (x.split() for x in m.group(1).split(", "))}


AUTH = {"authorization": "Bearer demo"}


def _api_line(screen: str) -> str:
    return next((ln for ln in screen.splitlines() if "control-plane APIs" in ln), "")


def _drained(api: str) -> list[str]:
    r = httpx.get(f"{api}/v1/drains", timeout=5)
    r.raise_for_status()
    return [d["target"] for d in r.json()["drained"]]


def test_three_regions_lose_one_and_restore_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "demo", "--regions", "3", "--replicas", "1",
         "--rate", "8", "--duration", "100", "--listen-port", "0", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=(tmp_path / "demo.stderr").open("w"), text=True,
    )  # fmt: skip
    screens = Screens(proc)
    try:
        wait_until(lambda: "regions/us-east/lose" in screens.last(), 60, what="the demo's table")
        ctl = re.search(
            r"curl -X POST (http://127\.0\.0\.1:\d+/regions)/us-east/lose", screens.last()
        )
        assert ctl, screens.last()
        base = ctl.group(1)
        wait_until(lambda: served_from(screens.region_line("us-east")).get("us-east") == 100, 30,
                   what="us-east's edge served from us-east")  # fmt: skip
        last = screens.last()
        assert last.count("/vllm-") == 3
        assert "us-east:live" in last and "ap-south:live" in last
        apis = dict(re.findall(r"(\S+) (http://127\.0\.0\.1:\d+)", _api_line(last)))
        assert set(apis) == {"us-east", "eu-west", "ap-south"}, last

        # intent is one for all: a drain through eu-west's API (written at the home,
        # us-east) reaches every region's control plane by Redis replication
        r = httpx.post(f"{apis['eu-west']}/v1/drains/ap-south-gpu1", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        wait_until(lambda: all(_drained(u) == ["ap-south-gpu1"] for u in apis.values()), 15,
                   what="the drain in every region")  # fmt: skip
        r = httpx.delete(f"{apis['ap-south']}/v1/drains/ap-south-gpu1", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        wait_until(lambda: all(_drained(u) == [] for u in apis.values()), 15,
                   what="the undo in every region")  # fmt: skip

        before = len(screens.complete())
        r = httpx.post(f"{base}/us-east/lose", timeout=10)
        assert r.status_code == 200 and r.json()["us-east"] == "lost", r.text

        # us-east's edge keeps its clients: they are served from eu-west (the nearest)
        # (mostly eu-west: ap-south may take a few % by Envoy's priority spill-over)
        def evacuated() -> bool:
            share = served_from(screens.region_line("us-east"))
            return share.get("us-east", 0) == 0 and share.get("eu-west", 0) >= 80

        wait_until(evacuated, 40, what="us-east's edge served from eu-west")
        # No request of us-east's edge failed through the loss: the streams its servers
        # were answering were resumed in eu-west by the demo's resuming client.
        seen = [
            errors_resumed(screens.region_line("us-east", sc)) for sc in screens.complete()[before:]
        ]
        print(f"us-east's edge through the loss (errors, streams resumed): {seen}")
        assert seen and all(errors == 0 for errors, _ in seen), seen
        # the others see us-east's registry lost (grace 4 s)
        wait_until(lambda: "us-east:lost" in screens.region_line("eu-west"), 20,
                   what="eu-west's control plane to see us-east lost")  # fmt: skip
        assert "LOST" in screens.region_line("us-east")
        # the home is gone: a write elsewhere is refused (no split brain), reads still work
        r = httpx.post(f"{apis['eu-west']}/v1/drains/ap-south-gpu1", headers=AUTH, timeout=10)
        assert r.status_code == 503 and r.json()["error"] == "intent_home_unreachable", r.text
        assert _drained(apis["eu-west"]) == []

        r = httpx.post(f"{base}/us-east/restore", timeout=10)
        assert r.status_code == 200 and r.json()["us-east"] == "up", r.text
        wait_until(lambda: served_from(screens.region_line("us-east")).get("us-east") == 100, 40,
                   what="us-east's edge served from us-east again")  # fmt: skip
        assert "us-east:live" in screens.region_line("ap-south")
        # the home is back (its intent written back by the control planes): writes work
        wait_until(
            lambda: (
                httpx.post(
                    f"{apis['eu-west']}/v1/drains/ap-south-gpu1", headers=AUTH, timeout=10
                ).status_code
                == 200
            ),
            20,
            what="intent writes through eu-west again",
        )
        wait_until(lambda: _drained(apis["us-east"]) == ["ap-south-gpu1"], 15,
                   what="the drain at the restored home")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, (tmp_path / "demo.stderr").read_text()[-2000:]
    pids = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert pids.strip() == ""
