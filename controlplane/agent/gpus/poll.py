"""Reads a slow GPU source in a background thread so that ``read()`` never blocks.

NVML calls usually take microseconds to milliseconds, but on a sick node (a GPU fallen
off the bus, a wedged driver) they can hang for seconds. The agent calls ``read()`` from
its event loop on every probe, so ``PolledGpuSource`` samples the real source in a daemon
thread every ``period_s`` and ``read()`` returns the latest sample.

If a sample takes longer than ``stuck_s``, ``read()`` keeps returning the last one (its
latched faults included: dropping them would put a faulty GPU back in service) and logs
a warning once; it logs again when sampling recovers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controlplane.agent.gpus.source import GpuSource
from controlplane.fleet.model import GpuStats

log = logging.getLogger(__name__)


class PolledGpuSource:
    """A ``GpuSource`` sampled by a daemon thread; ``clear_faults`` and ``close`` pass on."""

    def __init__(
        self,
        inner: GpuSource,
        *,
        period_s: float = 0.25,
        stuck_s: float = 10.0,
        first_wait_s: float = 1.0,
        name: str = "gpu",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._period_s = period_s
        self._stuck_s = stuck_s
        self._first_wait_s = first_wait_s
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first = threading.Event()
        self._sample: tuple[GpuStats, ...] = ()
        self._sampling_since: float | None = None
        self._stuck_said = False
        self._thread: threading.Thread | None = None
        self.samples = 0
        """Samples taken so far (tests, and the probe's statistics)."""

    def start(self) -> PolledGpuSource:
        """Start the sampling thread (``read()`` does it too, if not done yet)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"aixds {self._name} reader", daemon=True
                )
                self._thread.start()
        return self

    def read(self) -> tuple[GpuStats, ...]:
        if self._thread is None:
            self.start()
        if not self._first.is_set():
            # Once, at startup: a record published before the first sample would show a
            # faulty GPU's replica as healthy for one beat.
            self._first.wait(self._first_wait_s)
        with self._lock:
            sample, since = self._sample, self._sampling_since
        if since is not None and self._clock() - since > self._stuck_s and not self._stuck_said:
            self._stuck_said = True
            log.warning(
                "%s: reading the GPUs has taken over %.0f s (driver hung?); "
                "publishing the last values until it returns",
                self._name,
                self._stuck_s,
            )
        return sample

    def clear_faults(self, before: float) -> list[str]:
        clear = getattr(self.inner, "clear_faults", None)
        return list(clear(before)) if callable(clear) else []

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (waiting at most ``timeout``) and close the inner source."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
        close = getattr(self.inner, "close", None)
        if callable(close) and (t is None or not t.is_alive()):
            close()

    def _run(self) -> None:
        failing = ""
        while not self._stop.is_set():
            started = self._clock()
            with self._lock:
                self._sampling_since = started
            try:
                sample = self.inner.read()
                if failing:
                    log.info("%s: reading the GPUs works again", self._name)
                failing = ""
            except Exception as e:  # a bug in a source must not end the thread
                if repr(e) != failing:
                    log.exception(
                        "%s: reading the GPUs failed; keeping the last values", self._name
                    )
                failing = repr(e)
                sample = self._sample  # its latched faults must not disappear
            with self._lock:
                self._sample = sample
                self._sampling_since = None
                if self._stuck_said:
                    log.info(
                        "%s: GPU read returned after %.1f s", self._name, self._clock() - started
                    )
                self._stuck_said = False
                self.samples += 1
            self._first.set()
            self._stop.wait(max(0.0, started + self._period_s - self._clock()))
