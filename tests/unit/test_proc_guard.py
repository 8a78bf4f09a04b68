"""``proc_guard``: a child started through it dies with its parent, even a ``kill -9``-ed
one; SIGTERM and SIGHUP unwind like Ctrl-C. Real processes (``sleep``), Linux only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from controlplane.proc_guard import (
    die_with_parent,
    interrupt_on_stop_signals,
    raise_if_stopped,
    stop_requested,
)
from tests.support import alive, wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux")

PARENT = """
import subprocess, sys, time
from controlplane.proc_guard import (
    die_with_parent,
    interrupt_on_stop_signals,
    raise_if_stopped,
    stop_requested,
)
guard = die_with_parent() if sys.argv[1] == "guarded" else None
child = subprocess.Popen(["sleep", "60"], preexec_fn=guard)
print(child.pid, flush=True)
time.sleep(60)
"""


def _parent_with_sleep(mode: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_child_dies_when_parent_is_killed() -> None:
    parent, child = _parent_with_sleep("guarded")
    t0 = time.monotonic()
    parent.kill()
    parent.wait(5)
    wait_until(lambda: not alive(child), 5, what="the guarded sleep to die")
    assert time.monotonic() - t0 < 2


def test_without_the_guard_the_child_outlives_its_parent() -> None:
    """The control: what the guard prevents really happens."""
    parent, child = _parent_with_sleep("unguarded")
    try:
        parent.kill()
        parent.wait(5)
        time.sleep(0.3)
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_no_guard_off_the_main_thread() -> None:
    """The kernel signals when the forking *thread* exits: a worker thread would kill the
    child early, so the guard is not offered there."""
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(die_with_parent()))
    t.start()
    t.join()
    assert got == [None]
    assert callable(die_with_parent())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_run_finally_blocks(sig: signal.Signals) -> None:
    code = """
import time
from controlplane.proc_guard import interrupt_on_stop_signals
interrupt_on_stop_signals()
try:
    print("ready", flush=True)
    time.sleep(30)
except KeyboardInterrupt as e:
    print("interrupted", e, flush=True)
finally:
    print("cleaned up", flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    p.send_signal(sig)
    out, _ = p.communicate(timeout=5)
    assert out.split("\n")[:2] == [f"interrupted {sig.name}", "cleaned up"]
    assert p.returncode == 0


def test_a_stop_signal_whose_interrupt_was_swallowed_is_still_seen() -> None:
    """Python only prints what an at-fork callback raises (logging's lock release during
    ``subprocess.Popen``): the KeyboardInterrupt of a SIGHUP that lands there is lost, so the
    demo's start-up asks ``raise_if_stopped`` after each step."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        interrupt_on_stop_signals()
        assert not stop_requested()
        raise_if_stopped()  # nothing yet
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)  # the handler runs here, in the main thread
        except KeyboardInterrupt:
            pass  # what Python does inside such a callback: the interrupt goes nowhere
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt, match="SIGHUP"):
            raise_if_stopped()
        interrupt_on_stop_signals()  # a new start-up forgets the old stop
        assert not stop_requested()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
