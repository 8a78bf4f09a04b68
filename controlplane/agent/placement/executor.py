"""The load/unload executor: reads the node's desired-models key and converges the servers.

Every ``ExecTiming.sync_s`` (and at once after a call returns) ``Executor.step`` reads the
desired key (format in ``desired``), asks the ``Converger`` which calls to make against
each server's latest probe, and starts them, at most one per (server, model). A key that
cannot be read changes nothing. Calls run as tasks owned here and cancelled by ``close``.
The publisher shows the executor's phases through ``overlay`` (loading -> warming ->
ready); a failure is logged with its reason and counted (``failures_total``), and the
model is retried only after its backoff. Servers sleep and wake as the converger says
(``converge``); the overlay also publishes sleep (models ``sleeping``, ``sleeping``) and
the load and wake times measured here in ``available``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from controlplane.agent.aio import raise_if_cancelled, wait_event
from controlplane.agent.placement.converge import Action, Converger, ExecTiming, Observed, Op
from controlplane.agent.placement.desired import Desired, DesiredError, DesiredSource, parse_desired
from controlplane.agent.placement.loaders import Loader, LoadError
from controlplane.agent.servers.adapter import Probe
from controlplane.agent.servers.scrape import Notes
from controlplane.fleet.model import ModelState

log = logging.getLogger(__name__)

_PREFER = {ModelState.READY: 0, ModelState.WARMING: 1, ModelState.LOADING: 2}


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """One server as the executor sees it: its loader and its latest (raw) probe."""

    loader: Loader | None
    latest: Callable[[], Probe | None]
    gpus: Callable[[], frozenset[str]] = frozenset
    """The uuids of its GPUs (a load or wake waits while another server of the same GPU
    gives memory back)."""


def observe(
    probe: Probe | None,
    can_load: bool,
    can_sleep: bool = False,
    gpus: frozenset[str] = frozenset(),
) -> Observed | None:
    """A probe reduced to reachability, sleep and model name -> state (the best per name)."""
    if probe is None:
        return None
    models: dict[str, ModelState] = {}
    for m in probe.models:
        seen = models.get(m.name)
        if seen is None or _PREFER.get(m.state, 9) < _PREFER.get(seen, 9):
            models[m.name] = m.state
    return Observed(probe.reachable, models, can_load, can_sleep, probe.sleeping, gpus)


class Executor:
    """Converges one node's model servers to its desired-models key."""

    def __init__(
        self,
        source: DesiredSource,
        servers: Callable[[], Mapping[str, ServerHandle]],
        timing: ExecTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._servers = servers
        self.timing = timing or ExecTiming()
        self._clock = clock
        self.converger = Converger(self.timing)
        self._calls: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._notes = Notes("executor:", log)
        self.calls = 0
        """Load/unload calls started (for tests and logs)."""

    @property
    def failures_total(self) -> int:
        return self.converger.failures_total

    def overlay(self, server: str, probe: Probe) -> Probe:
        """``probe`` as published: the executor's phases and versions laid over its models,
        and its failed loads and unloads."""
        c = self.converger
        models, sleeping = c.rested(server, c.published(server, probe.models), probe.sleeping)
        failures = c.failures(server)
        available = c.available(server, probe.available)
        return replace(
            probe, models=models, failures=failures, available=available, sleeping=sleeping
        )

    async def run(self) -> None:
        """Step forever; cancel to stop (then ``close``)."""
        while True:
            await self.step()
            await wait_event(self._wake, self.timing.sync_s)
            self._wake.clear()

    async def step(self) -> None:
        """Read the desired key once and start the calls it needs."""
        try:
            raw = await self._source.read()
        except Exception as e:  # Redis down, or a key too large: change nothing
            raise_if_cancelled()
            self._notes.say("read", f"desired key unreadable ({e}); no changes", logging.WARNING)
            return
        raise_if_cancelled()
        self._notes.say("read", "")
        desired = self._parse(raw)
        handles = dict(self._servers())
        observed = {
            name: observe(
                h.latest(),
                h.loader is not None and h.loader.can_load,
                h.loader is not None and h.loader.can_sleep,
                h.gpus(),
            )
            for name, h in handles.items()
        }
        for action in self.converger.tick(desired, observed, self._clock()):
            loader = handles[action.server].loader
            assert loader is not None  # the converger acts only on servers that can load
            self.calls += 1
            task = asyncio.create_task(
                self._call(action, loader), name=f"{action.op} {action.model}"
            )
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        for model, why in self.converger.problems.items():
            self._notes.say(f"problem {model}", f"{model}: {why}", logging.WARNING)

    def _parse(self, raw: Mapping[str, str]) -> dict[str, Desired]:
        out: dict[str, Desired] = {}
        for model, value in raw.items():
            try:
                out[model] = parse_desired(model, value)
                self._notes.say(f"entry {model}", "")
            except DesiredError as e:
                self._notes.say(
                    f"entry {model}", f"desired entry {model!r} ignored: {e}", logging.ERROR
                )
        return out

    async def _call(self, action: Action, loader: Loader) -> None:
        log.info("%s %s on %s", action.op.value, action.model or "(all)", action.server)
        error: str | None = None
        permanent = False
        try:
            async with asyncio.timeout(self.timing.call_timeout_s):
                if action.op is Op.LOAD:
                    await loader.load(action.want)
                elif action.op is Op.RELOAD:
                    await loader.reload(action.want)
                elif action.op is Op.SLEEP:
                    await loader.sleep()
                elif action.op is Op.WAKE:
                    await loader.wake()
                else:
                    await loader.unload(action.want)
        except LoadError as e:
            error, permanent = str(e), e.permanent
        except TimeoutError:
            error = f"no answer within {self.timing.call_timeout_s:g} s"
        except Exception as e:  # a bug in a loader must not kill the executor
            log.exception("%s %s crashed", action.op.value, action.model)
            error = f"{type(e).__name__}: {e}"
        self.converger.finished(action, error, self._clock(), permanent)
        self._wake.set()

    async def close(self) -> None:
        """Cancel calls in flight (the server may still finish them; the next agent adopts)."""
        calls = list(self._calls)
        for t in calls:
            t.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
