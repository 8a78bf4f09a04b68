"""What every model-server adapter needs: bounded HTTP reads, Prometheus text, checked numbers.

``fetch`` never raises for server trouble and never reads more than ``MAX_BODY_BYTES``.
``read_samples`` parses Prometheus text with prometheus-client's parser; ``gauge`` turns the
samples of one metric into one believable number or ``None`` with a reason. ``Notes`` logs a
condition when it changes, not on every probe.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controlplane.fleet.codec import MAX_MODELS
from controlplane.fleet.model import LoadStats

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""A model server's answer larger than this is refused (it would only cost memory)."""
MAX_COUNT = 1e6
"""More waiting or running requests than this on one server is a broken exporter."""
DEFAULT_VERSION = "default"
RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank", "attn_tp_rank"})
"""Labels of series that repeat one scheduler's state once per GPU rank (SGLang)."""


class MetricsError(ValueError):
    """``/metrics`` is not Prometheus text."""


@dataclass(frozen=True, slots=True)
class Reading:
    """The load numbers found in one scrape; ``None`` = missing or not believable."""

    waiting: float | None
    running: float | None
    kv_cache_usage: float | None
    problems: tuple[str, ...] = ()
    generated_tokens: float | None = None
    """The server's generated-token counter (all series summed), if it has one."""
    decode_steps: tuple[float, float] | None = None
    """Per-sequence decode intervals so far and the seconds they took (counters): TGI's
    decode steps, or the count and sum of a server's inter-token latency histogram."""
    prefix_cache: tuple[float, float] | None = None
    """Prefix-cache hits and lookups so far, in prompt tokens (counters, series summed)."""
    prefix_hit_rate: float | None = None
    """A prefix-cache hit rate the server computes itself (0..1), when it has no counters."""

    def load(self) -> LoadStats:
        """What is published: an unreadable number counts as 0, never as nonsense."""
        return LoadStats(
            queue_waiting=self.waiting or 0.0,
            running=self.running or 0.0,
            kv_cache_usage=self.kv_cache_usage or 0.0,
        )

    def problem(self) -> str:
        return f"{'; '.join(self.problems)} (counted as 0)" if self.problems else ""


class BodyTooLarge(Exception):
    """The server sent more than ``MAX_BODY_BYTES``."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP answer (status and body), read within the size limit."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` if it is not."""
        return json.loads(self.body)


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    body: Any = None,
    wait_s: float | None = None,
) -> Reply | Exception:
    """One request; transport errors and oversized bodies come back as the exception.

    ``wait_s`` replaces the client's timeouts for this request (a model load is slow).
    """
    extra: dict[str, Any] = {} if wait_s is None else {"timeout": wait_s}
    try:
        async with client.stream(method, url, json=body, **extra) as resp:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return BodyTooLarge(f"{url} sent more than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return Reply(resp.status_code, b"".join(chunks))
    except httpx.HTTPError as e:
        return e


def json_of(reply: Reply | Exception) -> Any:
    """The JSON body of a 200 answer, else ``None`` (so callers check one thing)."""
    if isinstance(reply, Exception) or reply.status != 200:
        return None
    try:
        return reply.json()
    except ValueError:
        return None


def failure(reply: Reply | Exception) -> str:
    """A short reason for a failed request, for logs."""
    if isinstance(reply, Exception):
        return f"{type(reply).__name__}: {reply}"
    return f"HTTP {reply.status}"


def reading_from(
    reply: Reply | Exception, where: str, read: Callable[[Reply], Reading]
) -> tuple[Reading | None, str]:
    """The reading in a metrics answer (``None`` if unreadable) and a problem to log."""
    if isinstance(reply, Exception) or reply.status != 200:
        return None, f"{where} failed ({failure(reply)}): load published as 0"
    try:
        reading = read(reply)
    except ValueError as e:  # MetricsError, bad JSON, wrong shape
        return None, f"{where}: {e}; load published as 0"
    problem = reading.problem()
    return reading, f"{where}: {problem}" if problem else ""


def load_from(
    reply: Reply | Exception, where: str, read: Callable[[Reply], Reading]
) -> tuple[LoadStats, str]:
    """The load in a metrics answer and a problem to log ("" if none): never nonsense."""
    reading, problem = reading_from(reply, where, read)
    return (LoadStats() if reading is None else reading.load()), problem


Series = list[tuple[Mapping[str, str], float]]


def read_samples(text: str, names: Iterable[str]) -> dict[str, Series]:
    """The samples of the named metrics, each with its labels; ``MetricsError`` on garbage."""
    wanted = frozenset(names)
    out: dict[str, Series] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in wanted:
                    out.setdefault(s.name, []).append((s.labels, float(s.value)))
    except Exception as e:  # the parser raises several types on garbage
        raise MetricsError(f"not Prometheus text: {e}") from None
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def gauge(
    samples: Mapping[str, Series],
    names: tuple[str, ...],
    hi: float,
    combine: Callable[[list[float]], float],
    problems: list[str],
    *,
    where: Mapping[str, str] | None = None,
) -> float | None:
    """One number from the first of ``names`` present, combining its series.

    ``where`` keeps only series with those label values. Series that differ only by a rank
    label (``RANK_LABELS``) repeat one value: the largest of them counts once. One value
    that is NaN, infinite, negative or above ``hi`` makes the result ``None`` (a partial
    sum would understate load), and ``problems`` says why.
    """
    name = next((n for n in names if n in samples), None)
    series = [] if name is None else _select(samples[name], where)
    if name is None or not series:
        problems.append(f"{_describe(names[0], where)} missing")
        return None
    bad = [v for _, v in series if not math.isfinite(v) or v < 0 or v > hi]
    if bad:
        problems.append(f"{_describe(name, where)} has {bad[0]!r}, outside [0, {hi:g}]")
        return None
    return float(combine(_dedupe_ranks(series)))


def counter_total(
    samples: Mapping[str, Series],
    names: tuple[str, ...],
    *,
    where: Mapping[str, str] | None = None,
) -> float | None:
    """The sum of a counter's series (first of ``names`` present; ``where``: only series
    with those labels); ``None`` if it is missing or any value is not a finite count
    (optional metrics: no problem is noted)."""
    name = next((n for n in names if n in samples), None)
    if name is None:
        return None
    values = _dedupe_ranks(_select(samples[name], where))
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        return None
    return float(sum(values))


def counter_pair(
    samples: Mapping[str, Series], parts: tuple[str, ...], totals: tuple[str, ...]
) -> tuple[float, float] | None:
    """Two counters where the first counts a part of the second (prefix-cache hits of
    lookups), read under the same name generation (``parts[i]`` with ``totals[i]``);
    ``None`` if the server has neither or either is not a count, or a part exceeds its total."""
    for part_name, total_name in zip(parts, totals, strict=True):
        if part_name in samples or total_name in samples:
            part = counter_total(samples, (part_name,))
            total = counter_total(samples, (total_name,))
            if part is None or total is None or part > total:
                return None
            return part, total
    return None


HISTOGRAM_PARTS = ("_count", "_sum")


def histogram_totals(
    samples: Mapping[str, Series], names: tuple[str, ...]
) -> tuple[float, float] | None:
    """Observations so far and their sum, of the first histogram of ``names`` present (all
    series summed); ``None`` if there is none or either part is not a count."""
    for name in names:
        count = counter_total(samples, (name + "_count",))
        total = counter_total(samples, (name + "_sum",))
        if count is not None or total is not None:
            return None if count is None or total is None else (count, total)
    return None


@dataclass(frozen=True, slots=True)
class LoadMetrics:
    """The Prometheus names a server exports its load under; of each tuple the first name
    present counts (a metric's current name first, then its older ones)."""

    waiting: tuple[str, ...]
    running: tuple[str, ...]
    kv_cache: tuple[str, ...]
    """KV-cache use, 0..1."""
    generated: tuple[str, ...] = ()
    """Decode tokens so far (a counter): the agent's speed estimate (``servers.speed``)."""
    prefix_hits: tuple[str, ...] = ()
    prefix_queries: tuple[str, ...] = ()
    """Prompt tokens found in / looked up in the prefix cache (counters, paired by index):
    the agent's hit rate (``servers.cache_hits``)."""
    prefix_hit_rate: tuple[str, ...] = ()
    """A hit-rate gauge (0..1) for servers without those counters; negative = not known."""
    token_latency: tuple[str, ...] = ()
    """Histograms of the time between two tokens of a sequence (their ``_count`` and
    ``_sum``): the decode speed over every token in between two scrapes, however short the
    requests (the generated-token counter needs sequences running at both scrapes)."""

    def read(self, text: str) -> Reading:
        """The load in Prometheus text; ``MetricsError`` if it is not that.

        Counts are summed over every series (models, engines, data-parallel ranks); KV-cache
        use is a fraction, so it is averaged. One bad series makes the whole metric
        ``None``: a partial sum would understate load. Counters and the hit-rate gauge are
        optional: missing, they are ``None`` and no problem is noted.
        """
        names = (self.waiting, self.running, self.kv_cache, self.generated)
        latency = tuple(f"{n}{suffix}" for n in self.token_latency for suffix in HISTOGRAM_PARTS)
        extra = (self.prefix_hits, self.prefix_queries, self.prefix_hit_rate, latency)
        samples = read_samples(text, (n for group in names + extra for n in group))
        problems: list[str] = []
        rate = self.prefix_hit_rate
        return Reading(
            gauge(samples, self.waiting, MAX_COUNT, sum, problems),
            gauge(samples, self.running, MAX_COUNT, sum, problems),
            gauge(samples, self.kv_cache, 1.0, mean, problems),
            tuple(problems),
            counter_total(samples, self.generated),
            prefix_cache=counter_pair(samples, self.prefix_hits, self.prefix_queries),
            prefix_hit_rate=gauge(samples, rate, 1.0, mean, []) if rate else None,
            decode_steps=histogram_totals(samples, self.token_latency),
        )


def _select(series: Series, where: Mapping[str, str] | None) -> Series:
    if not where:
        return series
    return [(lb, v) for lb, v in series if all(lb.get(k) == want for k, want in where.items())]


def _describe(name: str, where: Mapping[str, str] | None) -> str:
    if not where:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(where.items())) + "}"


def _dedupe_ranks(series: Series) -> list[float]:
    groups: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, v in series:
        key = tuple(sorted((k, x) for k, x in labels.items() if k not in RANK_LABELS))
        groups[key] = max(v, groups.get(key, v))
    return list(groups.values())


def checked_number(value: Any, hi: float) -> float | None:
    """A JSON number in ``[0, hi]``, else ``None`` (booleans and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) and 0 <= f <= hi else None


def valid_name(value: Any, limit: int = 1024) -> str | None:
    """A model name as the server gave it, if it is a non-empty string of sane length."""
    return value if isinstance(value, str) and value and len(value) <= limit else None


def parse_openai_models(doc: Any, versions: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``(name, version)`` of each model in an OpenAI ``/v1/models`` answer.

    The version is ``versions[name]`` (``--model-version``, config file or Docker label),
    else the entry's ``aixds_version`` (the fake server sets it), else ``"default"``.
    ``ValueError`` if the document is not a model list.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError("not an OpenAI model list (no 'data' list)")
    out: dict[str, str] = {}
    for entry in doc["data"]:
        if not isinstance(entry, dict):
            continue
        name = valid_name(entry.get("id"))
        if name is None:
            continue
        tag = entry.get("aixds_version")
        if not isinstance(tag, str) or not tag or len(tag) > 128:
            tag = DEFAULT_VERSION
        out.setdefault(name, versions.get(name, tag))
        if len(out) >= MAX_MODELS:
            break
    return tuple(out.items())


class Notes:
    """Logs each topic's condition once, when it changes; remembers at most ``limit`` topics.

    A topic may carry an outside name (a replica's): past the limit the oldest topic is
    forgotten (and might be logged once more), so memory stays bounded.
    """

    def __init__(self, where: str, logger: logging.Logger = log, limit: int = 256) -> None:
        self._where = where
        self._log = logger
        self._limit = limit
        self._said: dict[str, str] = {}

    def say(self, topic: str, what: str, level: int = logging.INFO) -> None:
        if what == self._said.get(topic, ""):
            return
        self._said.pop(topic, None)
        if what:
            self._log.log(level, "%s %s", self._where, what)
            while len(self._said) >= self._limit:
                del self._said[next(iter(self._said))]
            self._said[topic] = what
