"""Issue 14: the web dashboard (``/ui``) in a real browser on a real fleet.

Playwright drives the system's Chromium (Debian package ``chromium``; Playwright's own
browser download is not used) against ``aixds serve`` with real Redis, an edge Envoy,
fake vLLM servers and their agents (``sim`` GPUs). The page must show the fleet, follow a
replica's load and a rollout without reloading, refuse a write without the token (and
say why), and promote / roll back with it.

On failure a screenshot of the page is saved to ``$AIXDS_UI_SCREENSHOTS`` (default
``.artifacts/ui-screenshots/``) as ``<test name>.png``, with the page's console log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.fleet import Fleet
from tests.support import Procs, RedisServer, wait_until

pytestmark = pytest.mark.e2e

try:
    from playwright import sync_api as playwright_api
except ImportError:  # the dev extra installs it
    playwright_api = None  # type: ignore[assignment]

TOKEN = "ui-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LAPTOP = {"width": 1366, "height": 768}
SCREENSHOTS = Path(os.environ.get("AIXDS_UI_SCREENSHOTS", ".artifacts/ui-screenshots"))


def chromium_path() -> str | None:
    """``$AIXDS_CHROMIUM``, else ``chromium`` on PATH (apt's /usr/bin/chromium)."""
    return os.environ.get("AIXDS_CHROMIUM") or shutil.which("chromium")


CHROMIUM = chromium_path()


@pytest.fixture
def fleet(procs: Procs, redis_srv: RedisServer) -> Iterator[Fleet]:
    f = Fleet(procs, redis_srv)
    f.start_serve("--api-token", TOKEN, "--lrs-interval", "0.5")
    f.add_replica(version="v1", node="gpu-1", gpu="sim")
    f.add_replica(version="v1", node="gpu-2", zone="us-b", gpu="sim")
    f.add_replica(version="v2", node="gpu-3", gpu="sim")
    edge = f.add_edge()
    f.wait_routable(edge, "llama", 2)
    yield f


@pytest.fixture
def chromium() -> str:
    """The browser's path; the test skips, saying why, without one (asked for first, so
    that no fleet is started for nothing)."""
    if playwright_api is None:
        pytest.skip("the playwright package is missing: make .venv/.installed (dev extra)")
    if CHROMIUM is None:
        pytest.skip(
            "no chromium binary: install Debian's `chromium` (make chromium, or apt-get "
            "install chromium) or set AIXDS_CHROMIUM=/path/to/chromium"
        )
    return CHROMIUM


@pytest.fixture
def page(chromium: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    console: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport=LAPTOP)
            pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            pg.set_default_timeout(15_000)
            yield pg
            failed = getattr(request.node, "rep_call", None)
            if failed is not None and failed.failed:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                shot = SCREENSHOTS / f"{request.node.name}.png"
                pg.screenshot(path=str(shot), full_page=True)
                (SCREENSHOTS / f"{request.node.name}.console.txt").write_text("\n".join(console))
                print(f"\nscreenshot of the failed page: {shot}")
            # script errors only: Chromium also logs each refused write ("Failed to load
            # resource: ... 401"), which the test asks for
            errors = [
                c
                for c in console
                if c.startswith(("error", "pageerror")) and "Failed to load resource" not in c
            ]
            assert not errors, console
        finally:
            browser.close()


def test_dashboard_follows_the_fleet_live_and_guards_writes(
    chromium: str, fleet: Fleet, page: Any
) -> None:
    expect = playwright_api.expect
    a, b, _ = fleet.replicas
    page.goto(f"{fleet.api}/ui")
    page.evaluate("window.__noReload = true")  # gone if the page ever reloads

    # the fleet: region -> zones -> nodes -> replicas, with EDS weight/health per group
    expect(page.get_by_test_id("conn")).to_have_text("live")
    for rep in fleet.replicas:
        row = page.locator(f'tr[data-replica="{rep.replica_id}"]')
        expect(row).to_be_visible()
        expect(row.locator(".models")).to_contain_text(f"llama@{rep.version} ready")
    expect(page.locator('[data-region="us"] tr.zone')).to_have_count(2)
    row_a = page.locator(f'tr[data-replica="{a.replica_id}"]')
    expect(row_a.locator(".eds-cell")).to_contain_text(re.compile(r"edge@us w\d+ p0 HEALTHY"))
    expect(page.get_by_test_id("groups")).to_contain_text("edge-us-")

    # a replica's load changes (a noisy neighbour takes 80% of its GPU): shown live
    expect(row_a.locator(".gpus")).not_to_contain_text(re.compile(r"\b(8\d|9\d)%"))
    r = httpx.post(f"{a.url}/control", json={"external_load": 0.8}, timeout=5)
    assert r.status_code == 200, r.text
    expect(row_a.locator(".gpus")).to_contain_text(re.compile(r"\b(8\d|9\d)%"))

    # a rollout started through the API shows up, with its event on the timeline
    card = page.locator('.card[data-model="llama"]')
    expect(card.get_by_test_id("rollout-state")).to_have_text("stable v1")
    r = httpx.post(
        f"{fleet.api}/v1/rollouts/llama", json={"to": "v2", "canary_percent": 20}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    expect(card.get_by_test_id("rollout-state")).to_have_text("stable v1 · canary v2 at 20%")
    expect(card.locator('tr[data-version="v2"]')).to_contain_text("20.0%")
    expect(page.get_by_test_id("timeline")).to_contain_text("llama: canary v2 started at 20%")

    # promote without a token: the API refuses, the page says so, nothing changes
    card.locator('button[data-action="promote"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text("promote llama refused: 401 unauthorized")
    after = httpx.get(f"{fleet.api}/v1/rollouts/llama").json()
    assert (after["stable"], after["canary"]) == ("v1", "v2")

    # a wrong token is refused too; the right one promotes
    page.get_by_test_id("token").fill("not-the-token")
    card.locator('button[data-action="promote"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text("refused: 401")
    page.get_by_test_id("token").fill(TOKEN)
    card.locator('button[data-action="promote"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text("promote llama: done")
    expect(card.get_by_test_id("rollout-state")).to_have_text("stable v2")
    expect(page.get_by_test_id("timeline")).to_contain_text("llama: promoted v2 (was v1)")

    # roll back with a reason: recorded and shown
    card.get_by_test_id("reason-llama").fill("p99 up in the dashboard test")
    card.locator('button[data-action="rollback"]').click()
    expect(page.get_by_test_id("notice")).to_contain_text("rollback llama: done")
    expect(card.get_by_test_id("rollout-state")).to_have_text("stable v1")
    expect(page.get_by_test_id("timeline")).to_contain_text(
        "llama: rolled back v2 -> v1 (manual): p99 up in the dashboard test"
    )
    assert httpx.get(f"{fleet.api}/v1/rollouts/llama").json()["stable"] == "v1"

    # a drain through the API: the node is marked and the timeline says so
    r = httpx.post(f"{fleet.api}/v1/drains/{b.node}", headers=AUTH)
    assert r.status_code == 200, r.text
    expect(page.locator(f'tr.node[data-node="{b.node}"]')).to_contain_text("drained")
    expect(page.get_by_test_id("timeline")).to_contain_text(f"drain {b.node}: no new requests")

    assert page.evaluate("window.__noReload") is True
    # usable on a laptop screen: nothing wider than the window
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_demo_prints_the_dashboard_and_it_shows_the_demo_fleet(tmp_path: Path, page: Any) -> None:
    expect = playwright_api.expect
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        demo = subprocess.Popen(
            [
                sys.executable, "-m", "controlplane", "demo", "--duration", "60", "--rate", "30",
                "--listen-port", "0", "--log-dir", str(tmp_path / "logs"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        found: list[str] = []

        def printed() -> bool:
            found[:] = re.findall(r"web dashboard: (http://127\.0\.0\.1:\d+/ui)", out.read_text())
            return bool(found) or demo.poll() is not None

        wait_until(printed, 60, what="the demo to print its dashboard URL")
        assert found, out.read_text()[-2000:]
        page.goto(found[0])
        rows = page.locator("tr[data-replica]")
        expect(rows).to_have_count(5)  # 3 llama replicas, 2 servers sharing the swap GPU
        # the demo's agents read each fake server's simulated GPU through the NVML code path
        for i in range(5):
            expect(rows.nth(i).locator(".gpus")).to_contain_text(re.compile(r"\d+\.\d/80\.0 GiB"))
        # the demo's load is spread over the replicas: their shares of llama add up to 100%
        page.wait_for_function(
            """() => {
              const cells = [...document.querySelectorAll("tr[data-replica] td.share")];
              const sum = cells.reduce((a, c) => a + (parseFloat(c.textContent) || 0), 0);
              return cells.filter((c) => /%/.test(c.textContent)).length >= 2
                && Math.abs(sum - 100) < 0.5;
            }"""
        )
        expect(page.locator('.card[data-model="llama"]')).to_contain_text("stable v1")
    finally:
        demo.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            demo.wait(30)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    assert demo.returncode == 0, out.read_text()[-2000:]
    assert time.monotonic() - t0 < 30


def test_serve_stops_promptly_while_a_dashboard_stream_is_open(
    procs: Procs, redis_srv: RedisServer
) -> None:
    f = Fleet(procs, redis_srv)
    serve = f.start_serve()
    with (
        httpx.Client(timeout=10) as c,
        c.stream("GET", f"{f.api}/v1/events") as stream,
    ):
        lines = stream.iter_lines()
        assert any(line.startswith("data: {") for line in lines)
        serve.kill(signal.SIGTERM)
        t0 = time.monotonic()
        assert serve.popen is not None
        assert serve.popen.wait(10) == 0
        stopped_s = time.monotonic() - t0
        list(lines)  # the server ended the stream: nothing hangs
    assert stopped_s < 3.0
