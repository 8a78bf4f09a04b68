"""Child processes that die with their parent, and stop signals that unwind like Ctrl-C.

``die_with_parent()`` is a ``preexec_fn`` for ``subprocess.Popen``: on Linux the child asks
the kernel (``prctl(PR_SET_PDEATHSIG)``) for SIGTERM when its parent dies, however it dies
(``kill -9`` included), and the setting survives ``exec``, so it works for foreign
binaries (redis-server, Envoy). Each level sets it for its own children (``aixds demo`` ->
``aixds envoy`` -> ``envoy``), so a whole tree goes. Elsewhere it is ``None``: the parent's
signal handlers still stop its children, but a parent killed with SIGKILL leaves them
running (a foreign binary cannot be made to watch a pipe).

Imported by the demo, the Envoy runner, the benchmarks and the tests; imports nothing of
the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1
"""From <linux/prctl.h>."""


def _load_prctl() -> Any:
    """libc's ``prctl``, resolved once here: the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies.

    ``None`` (no guard) off Linux, and when called outside the main thread: the kernel
    sends the signal when the *thread* that forked the child exits, and only the main
    thread lives as long as the process. Every caller here forks from the main thread
    (asyncio code runs there too).

    In the child, between fork and exec, it runs only the pre-resolved ``prctl`` and
    ``getppid``, so it is safe even while other threads of the parent hold locks. If the
    parent died before ``prctl`` took effect (the child then has another parent already),
    the child exits at once instead of running unguarded.
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = _PRCTL, os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + sig)

    return preexec


def leave_terminal() -> None:
    """Point stdout and stderr at /dev/null if they are a terminal (a character device).

    After SIGHUP the terminal is gone and every write to it fails (EIO), which would turn
    the shutdown messages into errors; pipes and files are kept.
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
    finally:
        os.close(null)


_stop_signal: list[str] = []
"""The stop signals ``interrupt_on_stop_signals`` has seen (a list: no ``global``)."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        leave_terminal()
    _stop_signal.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread.

    So a closed terminal (SIGHUP), ``kill`` or Ctrl-C runs the same ``finally`` blocks that
    stop every child. Call it from the main thread before starting children. The raise
    can be lost: a signal that arrives while Python runs a callback whose exceptions it
    only prints (``logging``'s at-fork lock release during ``subprocess.Popen``, seen in
    CI) interrupts nothing, so the signal is also remembered: call ``raise_if_stopped``
    at each step of a start-up, and ``stop_requested`` where other handlers take over.
    """
    _stop_signal.clear()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def stop_requested() -> bool:
    """Whether a stop signal came since ``interrupt_on_stop_signals``."""
    return bool(_stop_signal)


def raise_if_stopped() -> None:
    """``KeyboardInterrupt`` if a stop signal came (whether or not its raise got through)."""
    if _stop_signal:
        raise KeyboardInterrupt(_stop_signal[0])
