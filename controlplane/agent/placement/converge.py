"""The load/unload state machine of the executor, free of I/O: ``Converger``.

Per (server, model) named in the desired key it keeps a ``Track`` and, on each ``tick``,
compares what is wanted with what the server reports (its latest probe) and says which
calls to make. The executor makes them and reports back with ``finished``. Phases::

    NEW -> LOADING (call in flight) -> WARMING (listed; ramping) -> READY
    NEW / READY -> DRAINING (published ``unloading``) -> UNLOADING (call in flight) -> GONE
    any call that fails -> FAILED, retried after an exponential backoff (never at once)

``published`` overlays the phases on a probe's model list, which is how the record shows
``loading`` -> ``warming`` -> ``ready`` (and ``unloading`` while draining). The clock is
an argument everywhere, so tests step through time.

Sleep is per server (``Rest``). A server sleeps when every model the desired key manages
on it (state loaded or sleeping) is ``sleeping`` and loaded, it holds no model the key
does not manage (a base model nobody placed may be serving), no load or unload runs on it,
and its kind can sleep; it wakes when any such model is desired ``loaded`` (or ``sleeping``
but not there yet: it wakes to load it, then sleeps again). Phases::

    AWAKE -> DRAINING (published sleeping, ``drain_s``) -> SLEEPING (call) -> ASLEEP
    ASLEEP -> WAKING (call) -> WARMING (published warming, ``wake_warmup_s``) -> AWAKE

A server that sleeps is published with every model ``sleeping``. No load starts on a
sleeping server (unloads do). Servers that share a GPU (the same GPU uuid: one vLLM per
model on one GPU) share its memory: a load or a wake on one waits while another gives
memory back (draining or asleep-bound, unloading or asked to unload), so the weights
coming up never meet the weights going down on the GPU. A kind that cannot sleep keeps
its models loaded, with no error. ``available`` lays the load and wake times this agent
measured over the server's.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controlplane.agent.placement.desired import Desired
from controlplane.agent.servers.scrape import DEFAULT_VERSION
from controlplane.fleet.model import (
    MAX_ERROR_CHARS,
    AvailableModel,
    ModelFailure,
    ModelInfo,
    ModelState,
)

log = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    NEW = "new"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    UNLOADING = "unloading"
    GONE = "gone"
    FAILED = "failed"


class Op(enum.StrEnum):
    LOAD = "load"
    RELOAD = "reload"
    UNLOAD = "unload"
    SLEEP = "sleep"
    WAKE = "wake"
    """Server-wide: their ``Action.model`` is empty."""


class Rest(enum.StrEnum):
    """A server's sleep phase."""

    AWAKE = "awake"
    DRAINING = "draining"
    SLEEPING = "sleeping"
    ASLEEP = "asleep"
    WAKING = "waking"
    WARMING = "warming"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ExecTiming:
    """How the executor paces itself."""

    sync_s: float = 1.0
    """Read the desired key this often."""
    warmup_s: float = 5.0
    """A freshly loaded model is published ``warming`` this long (Envoy ramps it in)."""
    drain_s: float = 2.0
    """A model to unload is published ``unloading`` this long before the call."""
    appear_s: float = 30.0
    """After a load call succeeds, the server must list the model within this."""
    call_timeout_s: float = 300.0
    """Longest load or unload call (weights take a while)."""
    backoff_min_s: float = 1.0
    """Wait after the first failure; doubled after each further one."""
    backoff_max_s: float = 300.0
    jitter: float = 0.1
    """Backoffs vary by this fraction, so agents that failed together retry apart."""
    wake_warmup_s: float = 1.0
    """A woken server's models are published ``warming`` this long (Envoy ramps them)."""
    settle_s: float = 1.0
    """After a sleep or wake call, trust it over probes this long (they may predate it)."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What a server's latest probe says, as the state machine needs it."""

    reachable: bool
    models: Mapping[str, ModelState]
    can_load: bool
    """The server kind has a load/unload API."""
    can_sleep: bool = False
    """The server kind has a sleep API."""
    sleeping: bool | None = None
    """The server says it sleeps; ``None``: it cannot say (the converger's phase counts)."""
    gpus: frozenset[str] = frozenset()
    """The uuids of the GPUs it runs on (servers that share one share its memory)."""


@dataclass(frozen=True, slots=True)
class Action:
    op: Op
    server: str
    model: str
    want: Desired


@dataclass(slots=True)
class Track:
    """The executor's state for one (server, model) of the desired key."""

    want: Desired
    server: str = ""
    phase: Phase = Phase.NEW
    since: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    error: str = ""
    failed_op: Op | None = None
    loaded_path: str | None = None
    """The ``path`` this agent loaded; ``None`` when it found the model already there."""
    in_flight: bool = False
    managed: bool = True
    """False once the desired entry is gone: the track ends when its call returns."""
    load_started: float = 0.0


@dataclass(slots=True)
class ServerRest:
    """The executor's sleep state for one server."""

    phase: Rest = Rest.AWAKE
    since: float = 0.0
    in_flight: bool = False
    started: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    failed_op: Op | None = None
    error: str = ""


MAX_MEASURED = 1024
"""Measured load times kept (the oldest go first)."""
_ASLEEPISH = (Rest.DRAINING, Rest.SLEEPING, Rest.ASLEEP, Rest.WAKING)
"""Phases published as sleeping, in which no load starts."""


def _shares(server: str, obs: Observed, freeing: Mapping[str, frozenset[str]]) -> bool:
    """Another server on one of ``server``'s GPUs is giving memory back."""
    return any(s != server and obs.gpus & g for s, g in freeing.items())


@dataclass(slots=True)
class Converger:
    """Decides the load/unload calls. Bounded: tracks exist only for desired entries."""

    timing: ExecTiming = field(default_factory=ExecTiming)
    rng: random.Random = field(default_factory=random.Random)
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    """Desired entries that cannot be acted on (model -> why), as of the last tick."""
    failures_total: int = 0
    """Failed calls since start (this agent's own counter; see the logs for each)."""
    rest: dict[str, ServerRest] = field(default_factory=dict)
    measured_load: dict[tuple[str, str], float] = field(default_factory=dict)
    """(server, model) -> seconds of the last load this agent made (call to loaded)."""
    measured_wake: dict[str, float] = field(default_factory=dict)
    """server -> seconds of the last wake this agent made."""

    def tick(
        self, desired: Mapping[str, Desired], servers: Mapping[str, Observed | None], now: float
    ) -> list[Action]:
        """The calls to start now. ``servers[name]`` is ``None`` until its first probe."""
        wanted: dict[tuple[str, str], Desired] = {}
        problems: dict[str, str] = {}
        loadable = sorted(n for n, o in servers.items() if o is not None and o.can_load)
        for model, d in desired.items():
            server = d.server or (loadable[0] if len(loadable) == 1 else "")
            if not server:
                problems[model] = "no 'server' given and this node has not exactly one loader"
            elif server not in servers:
                problems[model] = f"no server named {server!r} on this node"
            else:
                wanted[(server, model)] = d
        self.problems = problems
        for key, t in list(self.tracks.items()):
            if key not in wanted:
                t.managed = False
                if not t.in_flight:
                    del self.tracks[key]
        actions = []
        freeing = self._freeing(servers, wanted)
        for key, d in wanted.items():
            obs = servers[key[0]]
            if obs is None:
                continue
            t = self.tracks.setdefault(key, Track(want=d, server=key[0], since=now))
            if t.want != d and t.phase is Phase.FAILED:
                t.retry_at, t.failures = now, 0  # a changed entry is a new instruction
            path_changed = t.want.path != d.path
            t.want = d
            if t.in_flight:
                continue
            op = self._step(t, obs, key[1], now, path_changed)
            if op is Op.LOAD and _shares(key[0], obs, freeing):
                op = None  # its memory is still being freed by another server on its GPU
            if op is not None:
                t.in_flight = True
                t.phase = Phase.UNLOADING if op is Op.UNLOAD else Phase.LOADING
                t.since = t.load_started = now
                actions.append(Action(op, key[0], key[1], d))
        for gone in set(self.rest) - set(servers):
            if not self.rest[gone].in_flight:
                del self.rest[gone]
        for server, obs in servers.items():
            if obs is None:
                continue
            sop = self._rest_step(server, obs, wanted, now)
            if sop is Op.WAKE and _shares(server, obs, freeing):
                sop = None
            if sop is not None:
                r = self.rest[server]
                r.in_flight, r.started = True, now
                self._enter_rest(r, Rest.SLEEPING if sop is Op.SLEEP else Rest.WAKING, now)
                actions.append(Action(sop, server, "", Desired(model="", server=server)))
        return actions

    def _freeing(
        self, servers: Mapping[str, Observed | None], wanted: Mapping[tuple[str, str], Desired]
    ) -> dict[str, frozenset[str]]:
        """Awake servers that give GPU memory back now or are asked to (draining or
        sleeping, asked to sleep, unloading or asked to unload), with their GPUs: a load or a
        wake on another server of the same GPU waits until they are done, or it would find
        the memory still taken (vLLM: out of memory at ``/wake_up``). A server asleep holds
        none; one whose sleep or unload failed no longer counts (it may never succeed: a
        vLLM base model cannot be unloaded), so the others are not held forever."""
        out: dict[str, frozenset[str]] = {}
        for server, obs in servers.items():
            if obs is None or not obs.gpus:
                continue
            r = self.rest.get(server)
            if obs.sleeping or (r is not None and r.phase in (Rest.ASLEEP, Rest.WAKING)):
                continue
            tracks = {m: t for (s, m), t in self.tracks.items() if s == server}
            going = r is not None and r.phase in (Rest.DRAINING, Rest.SLEEPING)
            going = going or any(
                not t.want.loaded
                and t.failures == 0
                and (t.in_flight or t.phase in (Phase.NEW, Phase.DRAINING, Phase.UNLOADING))
                for t in tracks.values()
            )
            going = going or any(
                s == server and not d.loaded and m in obs.models and m not in tracks
                for (s, m), d in wanted.items()
            )
            failed = r is not None and r.phase is Rest.FAILED and r.failed_op is Op.SLEEP
            going = going or (not failed and self._wants_sleep(server, obs, wanted))
            if going:
                out[server] = obs.gpus
        return out

    @staticmethod
    def _wants_sleep(server: str, obs: Observed, wanted: Mapping[tuple[str, str], Desired]) -> bool:
        """Every model the desired key manages on ``server`` is there and asked to sleep,
        it holds none the key does not manage, and it can sleep."""
        entries = [(m, d) for (s, m), d in wanted.items() if s == server and d.loaded]
        if not entries or not obs.can_sleep:
            return False
        managed = {m for m, _ in entries}
        # A model the desired key does not manage (a base model nobody placed) may be
        # serving: sleep would take it down, so a server holding one stays awake.
        return (
            all(m in managed for m in obs.models)
            and all(d.sleeping for _, d in entries)
            and all(m in obs.models for m, _ in entries)
        )

    def _step(
        self, t: Track, obs: Observed, model: str, now: float, path_changed: bool
    ) -> Op | None:
        present = obs.models.get(model)
        r = self.rest.get(t.server)
        if r is not None and r.in_flight:
            return None  # a sleep or wake call runs on this server
        if t.want.loaded:
            op = self._towards_loaded(t, obs, present, now, path_changed)
            asleep = obs.sleeping or (r is not None and r.phase in _ASLEEPISH)
            return None if op is not None and asleep else op
        return self._towards_unloaded(t, obs, present, now)

    # -- sleep -------------------------------------------------------------------------
    def _rest_step(
        self, server: str, obs: Observed, wanted: Mapping[tuple[str, str], Desired], now: float
    ) -> Op | None:
        r = self.rest.setdefault(server, ServerRest(since=now))
        if r.in_flight:
            return None
        entries = [(m, d) for (s, m), d in wanted.items() if s == server and d.loaded]
        asleep = self._asleep(r, obs, now)
        if not entries or not obs.can_sleep:
            if r.phase is Rest.DRAINING:
                self._enter_rest(r, Rest.AWAKE, now)
            return None
        if self._wants_sleep(server, obs, wanted):
            return self._towards_asleep(server, r, obs, asleep, now)
        return self._towards_awake(r, obs, asleep, now)

    def _asleep(self, r: ServerRest, obs: Observed, now: float) -> bool:
        mine = r.phase in (Rest.ASLEEP, Rest.WAKING)
        if obs.sleeping is None:
            return mine
        if r.phase in (Rest.ASLEEP, Rest.WARMING) and now - r.since < self.timing.settle_s:
            return mine  # the probe may predate our call
        return obs.sleeping

    def _towards_asleep(
        self, server: str, r: ServerRest, obs: Observed, asleep: bool, now: float
    ) -> Op | None:
        if asleep:
            if r.phase is not Rest.ASLEEP:
                self._enter_rest(r, Rest.ASLEEP, now)  # ours, or adopted
            return None
        if r.phase is Rest.FAILED and r.failed_op is Op.SLEEP:
            return Op.SLEEP if now >= r.retry_at and obs.reachable else None
        busy = any(
            t.in_flight or t.phase in (Phase.LOADING, Phase.DRAINING, Phase.UNLOADING)
            for (s, _), t in self.tracks.items()
            if s == server
        )
        if busy:
            return None
        if r.phase is not Rest.DRAINING:
            self._enter_rest(r, Rest.DRAINING, now)  # published sleeping: traffic leaves
            return None
        if now - r.since >= self.timing.drain_s and obs.reachable:
            return Op.SLEEP
        return None

    def _towards_awake(self, r: ServerRest, obs: Observed, asleep: bool, now: float) -> Op | None:
        if asleep:
            if r.phase is Rest.FAILED and r.failed_op is Op.WAKE:
                return Op.WAKE if now >= r.retry_at and obs.reachable else None
            return Op.WAKE if obs.reachable else None
        if r.phase is Rest.ASLEEP:
            self._enter_rest(r, Rest.WARMING, now)  # woken by someone else
        elif r.phase in (Rest.DRAINING, Rest.FAILED):
            self._enter_rest(r, Rest.AWAKE, now)  # called off
        elif r.phase is Rest.WARMING and now - r.since >= self.timing.wake_warmup_s:
            self._enter_rest(r, Rest.AWAKE, now)
        return None

    def _enter_rest(self, r: ServerRest, phase: Rest, now: float) -> None:
        r.phase, r.since = phase, now
        if phase is not Rest.FAILED:
            r.failures, r.failed_op, r.error = 0, None, ""

    def _rest_finished(
        self, action: Action, error: str | None, now: float, permanent: bool
    ) -> None:
        r = self.rest.get(action.server)
        if r is None:
            return
        r.in_flight = False
        if error is None:
            if action.op is Op.WAKE:
                self._remember(self.measured_wake, action.server, now - r.started)
            self._enter_rest(r, Rest.ASLEEP if action.op is Op.SLEEP else Rest.WARMING, now)
            log.info("%s %s: done", action.op.value, action.server)
            return
        self.failures_total += 1
        r.failures += 1
        delay = math.inf if permanent else self.backoff(r.failures)
        r.phase, r.since, r.failed_op, r.error = Rest.FAILED, now, action.op, error
        r.retry_at = now + delay
        log.warning(
            "%s %s failed (%d in a row; %s): %s",
            action.op.value, action.server, r.failures,
            "not retried while the desired key asks the same" if permanent
            else f"retry in {delay:.1f} s", error,
        )  # fmt: skip

    @staticmethod
    def _remember(into: dict[Any, float], key: Any, value: float) -> None:
        into.pop(key, None)
        into[key] = value
        while len(into) > MAX_MEASURED:
            del into[next(iter(into))]

    def rested(
        self, server: str, models: tuple[ModelInfo, ...], sleeping: bool | None
    ) -> tuple[tuple[ModelInfo, ...], bool]:
        """``models`` with the server's sleep phase laid over them, and whether it sleeps."""
        r = self.rest.get(server)
        phase = Rest.AWAKE if r is None else r.phase
        if phase in _ASLEEPISH or (sleeping and phase is not Rest.WARMING):
            state = ModelState.SLEEPING
            keep = (ModelState.UNLOADING, ModelState.LOADING)
            return tuple(m if m.state in keep else replace(m, state=state) for m in models), True
        if phase is Rest.WARMING:
            hot = (ModelState.READY, ModelState.SLEEPING)
            warm = ModelState.WARMING
            return tuple(replace(m, state=warm) if m.state in hot else m for m in models), False
        return models, False

    def available(
        self, server: str, listed: tuple[AvailableModel, ...]
    ) -> tuple[AvailableModel, ...]:
        """The server's available models with this agent's measured load and wake times."""
        wake = self.measured_wake.get(server)
        out = []
        for a in listed:
            load = self.measured_load.get((server, a.name))
            if load is not None or wake is not None:
                a = replace(
                    a,
                    load_s=a.load_s if load is None else round(load, 3),
                    wake_s=a.wake_s if wake is None else round(wake, 3),
                )
            out.append(a)
        return tuple(out)

    def _towards_loaded(
        self, t: Track, obs: Observed, present: ModelState | None, now: float, path_changed: bool
    ) -> Op | None:
        if present is None and not obs.can_load:
            self._fail_permanently(t, "this server kind cannot load models at runtime", Op.LOAD)
            return None
        if t.phase is Phase.WARMING:
            if present is None:
                if now - t.since > self.timing.appear_s:
                    why = f"the server does not list it {self.timing.appear_s:g} s after loading"
                    self._failed(t, Op.LOAD, why, now)
            elif present is ModelState.READY and now - t.since >= self.timing.warmup_s:
                self._enter(t, Phase.READY, now)
            return None
        if t.phase is Phase.FAILED and t.failed_op is not Op.UNLOAD:
            if present is not None and t.failed_op is Op.LOAD:
                self._enter(t, Phase.READY, now)  # it got there after all
                return None
            due = now >= t.retry_at and obs.reachable
            return (t.failed_op or Op.LOAD) if due else None
        if present is not None:
            if t.phase is Phase.READY and path_changed and t.loaded_path is not None:
                return Op.RELOAD
            if t.phase is not Phase.READY:
                self._enter(t, Phase.READY, now)  # adopted, or an unload was called off
            return None
        return Op.LOAD if obs.reachable else None  # new, lost (server restart) or unloaded

    def _towards_unloaded(
        self, t: Track, obs: Observed, present: ModelState | None, now: float
    ) -> Op | None:
        if present is None or present is ModelState.UNLOADING:
            if t.phase is not Phase.GONE:
                self._enter(t, Phase.GONE, now)
            return None
        if not obs.can_load:
            self._fail_permanently(t, "this server kind cannot unload models at runtime", Op.UNLOAD)
            return None
        if t.phase is Phase.FAILED and t.failed_op is Op.UNLOAD:
            return Op.UNLOAD if now >= t.retry_at and obs.reachable else None
        if t.phase is not Phase.DRAINING:
            self._enter(t, Phase.DRAINING, now)
            return None
        if now - t.since >= self.timing.drain_s and obs.reachable:
            return Op.UNLOAD
        return None

    def finished(
        self, action: Action, error: str | None, now: float, permanent: bool = False
    ) -> None:
        """Report a call's outcome (``error`` ``None`` = it succeeded)."""
        if action.op in (Op.SLEEP, Op.WAKE):
            self._rest_finished(action, error, now, permanent)
            return
        key = (action.server, action.model)
        t = self.tracks.get(key)
        if t is None:
            return
        t.in_flight = False
        if not t.managed:
            del self.tracks[key]
            return
        if error is not None:
            if permanent:
                self._fail_permanently(t, error, action.op)
            else:
                self._failed(t, action.op, error, now)
            return
        t.failures, t.error, t.failed_op = 0, "", None
        if action.op is Op.UNLOAD:
            self._enter(t, Phase.GONE, now)
        else:
            t.loaded_path = action.want.path
            self._remember(self.measured_load, key, now - t.load_started)
            self._enter(t, Phase.WARMING, now)
        log.info("%s %s on %s: done", action.op.value, action.model, action.server)

    def _enter(self, t: Track, phase: Phase, now: float) -> None:
        t.phase, t.since = phase, now

    def _failed(self, t: Track, op: Op, error: str, now: float) -> None:
        t.failures += 1
        self.failures_total += 1
        delay = self.backoff(t.failures)
        t.phase, t.failed_op, t.error, t.retry_at = Phase.FAILED, op, error, now + delay
        log.warning(
            "%s %s on %s failed (%d in a row; retry in %.1f s): %s",
            op.value, t.want.model, t.server, t.failures, delay, error,
        )  # fmt: skip

    def _fail_permanently(self, t: Track, error: str, op: Op) -> None:
        if t.phase is Phase.FAILED and t.error == error and math.isinf(t.retry_at):
            return
        self.failures_total += 1
        t.failures += 1
        t.phase, t.failed_op, t.error, t.retry_at = Phase.FAILED, op, error, math.inf
        log.error(
            "%s %s on %s: %s (not retried until its desired entry changes)",
            op.value, t.want.model, t.server, error,
        )  # fmt: skip

    def backoff(self, failures: int) -> float:
        tm = self.timing
        base = min(tm.backoff_max_s, tm.backoff_min_s * 2.0 ** min(failures - 1, 30))
        return base * (1.0 + tm.jitter * (2.0 * self.rng.random() - 1.0))

    def published(self, server: str, models: tuple[ModelInfo, ...]) -> tuple[ModelInfo, ...]:
        """A probe's models with this server's phases and desired versions laid over them."""
        mine = {m: t for (s, m), t in self.tracks.items() if s == server and t.managed}
        if not mine:
            return models
        out: dict[tuple[str, str], ModelInfo] = {}
        for m in models:
            t = mine.get(m.name)
            state = m.state if t is None else _overlay(t, m.state)
            if state is not None:
                version = t.want.version if t is not None and t.want.version else m.version
                out.setdefault((m.name, version), ModelInfo(m.name, version, state))
        listed = {m.name for m in models}
        for name, t in mine.items():
            if name not in listed and t.phase in (Phase.LOADING, Phase.WARMING) and t.want.loaded:
                version = t.want.version or DEFAULT_VERSION
                out.setdefault((name, version), ModelInfo(name, version, ModelState.LOADING))
        return tuple(out.values())

    def failures(self, server: str) -> tuple[ModelFailure, ...]:
        """This server's failed loads and unloads, as its record shows them: from the first
        failure until a call succeeds or the entry changes (also while a retry runs)."""
        return tuple(
            ModelFailure(
                name=m,
                version=t.want.version,
                op="unload" if t.failed_op is Op.UNLOAD else "load",
                error=t.error[:MAX_ERROR_CHARS],
                failures=t.failures,
                permanent=t.phase is Phase.FAILED and math.isinf(t.retry_at),
            )
            for (s, m), t in sorted(self.tracks.items())
            if s == server and t.managed and t.failures > 0
        )

    def status(self) -> list[dict[str, object]]:
        """Every track, for logs and tests."""
        return [
            {
                "server": s,
                "model": m,
                "phase": t.phase.value,
                "failures": t.failures,
                "error": t.error,
                "retry_at": t.retry_at,
            }
            for (s, m), t in sorted(self.tracks.items())
        ]


def _overlay(t: Track, reported: ModelState) -> ModelState | None:
    """The state published for a model the server lists, given its track."""
    if t.phase is Phase.LOADING:
        return ModelState.LOADING
    if t.phase is Phase.WARMING:
        return ModelState.WARMING if reported is ModelState.READY else reported
    if t.phase in (Phase.DRAINING, Phase.UNLOADING):
        return ModelState.UNLOADING
    if t.phase is Phase.GONE and not t.want.loaded:
        # Unloaded by this agent: a probe that still lists it was taken before the call
        # returned (published READY, the control plane would send it requests again).
        # A later probe that lists it starts another drain.
        return ModelState.UNLOADING
    if t.phase is Phase.FAILED and t.failed_op is Op.UNLOAD:
        return ModelState.UNLOADING
    return reported
