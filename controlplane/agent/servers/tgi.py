"""The TGI adapter (Hugging Face text-generation-inference): ``/info``, ``/health``, ``/metrics``.

The model is ``/info``'s ``model_id``. Load: ``tgi_queue_size`` (waiting) and
``tgi_batch_current_size`` (running). TGI exposes no KV-cache use, so it is published as
0 (unknown). Decode speed (``servers.speed``): the count and sum of
``tgi_batch_forward_duration{method="decode"}``, i.e. decode steps per second of stepping.
State: ``/health`` 200 -> ready. TGI's router listens only once its shards have loaded,
so there is no observable ``loading``; any other answer publishes no models.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from controlplane.agent.servers.adapter import UNREACHABLE, HttpAdapter, Probe
from controlplane.agent.servers.scrape import (
    DEFAULT_VERSION,
    MAX_COUNT,
    Reading,
    Reply,
    counter_total,
    failure,
    fetch,
    gauge,
    json_of,
    read_samples,
    reading_from,
    valid_name,
)
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind

WAITING = ("tgi_queue_size",)
RUNNING = ("tgi_batch_current_size",)
STEPS = ("tgi_batch_forward_duration_count",)
STEP_SECONDS = ("tgi_batch_forward_duration_sum",)
DECODE = {"method": "decode"}


def parse_metrics(text: str) -> Reading:
    """TGI's queue and batch gauges; KV-cache use is not exposed (``0.0``, not a problem)."""
    samples = read_samples(text, WAITING + RUNNING + STEPS + STEP_SECONDS)
    problems: list[str] = []
    waiting = gauge(samples, WAITING, MAX_COUNT, sum, problems)
    running = gauge(samples, RUNNING, MAX_COUNT, sum, problems)
    steps = counter_total(samples, STEPS, where=DECODE)
    seconds = counter_total(samples, STEP_SECONDS, where=DECODE)
    decode = None if steps is None or seconds is None else (steps, seconds)
    return Reading(waiting, running, 0.0, tuple(problems), decode_steps=decode)


def model_from_info(doc: Any) -> str | None:
    """The served model in an ``/info`` answer."""
    return valid_name(doc.get("model_id")) if isinstance(doc, dict) else None


class TgiAdapter(HttpAdapter):
    """Probes one TGI server. Implements ``ModelServerAdapter``."""

    @property
    def kind(self) -> ServerKind:
        return ServerKind.TGI

    async def probe(self) -> Probe:
        health, info, metrics = await asyncio.gather(
            *(fetch(self._client, "GET", self._base + p) for p in ("/health", "/info", "/metrics"))
        )
        if isinstance(health, Exception):
            self._notes.say("state", f"unreachable: {failure(health)}", logging.WARNING)
            return UNREACHABLE
        if health.status != 200:
            msg = f"/health answered {health.status}: publishing no models"
            self._notes.say("state", msg, logging.WARNING)
            return Probe(reachable=True)
        name = model_from_info(json_of(info))
        if name is None:
            self._notes.say("state", f"/info gave no model_id ({failure(info)})", logging.WARNING)
            return Probe(reachable=True)
        version = self._versions.get(name, DEFAULT_VERSION)
        reading, problem = reading_from(metrics, "/metrics", _read)
        if reading is not None:
            self._measure(reading)
        self._notes.say("state", f"ready: {name}@{version}")
        self._notes.say("metrics", problem, logging.WARNING)
        load = LoadStats() if reading is None else reading.load()
        models = (ModelInfo(name, version, ModelState.READY),)
        return Probe(True, models, load, speed=self._speed.speed, capacity=self._speed.capacity)


def _read(reply: Reply) -> Reading:
    return parse_metrics(reply.text)
