"""Reading Prometheus text (the control plane's and the fake servers' ``/metrics``) in tests,
with ``prometheus_client``'s own parser rather than by matching lines."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, timeout: float = 3.0) -> str:
    """The text of ``url`` (a ``/metrics`` endpoint); fails on any status but 200."""
    r = httpx.get(url, timeout=timeout)
    assert r.status_code == 200, (url, r.status_code, r.text[:200])
    return r.text


def _matching(text: str, name: str, labels: dict[str, str]) -> list[float]:
    return [
        float(s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The first sample named ``name`` (counters with their ``_total``) whose labels include
    ``labels``; ``AssertionError`` if there is none."""
    found = _matching(text, name, labels)
    if not found:
        raise AssertionError(f"{name}{labels} not in /metrics")
    return found[0]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0: none yet,
    as a labelled counter before its first increment)."""
    return sum(_matching(text, name, labels))
