"""Load Reporting Service (LRS) server on ``grpc.aio``: Envoys report per-cluster load.

Envoy's bootstrap (``cluster_manager.load_stats_config``) opens one
``LoadReportingService.StreamLoadStats`` stream to the control plane. The server answers
its first message with ``send_all_clusters``, ``report_endpoint_granularity`` and the
reporting interval; Envoy then sends, every interval, per cluster and locality (and per
endpoint) the requests that succeeded, failed, were issued and are in progress since its
previous report. Each report becomes a plain ``LoadReport`` handed to ``sink`` (which must
not block); this module keeps no history.

Reports are not trusted: a first message without a usable node ends the stream with
INVALID_ARGUMENT; a cluster entry with a count over ``MAX_REPORTED_COUNT`` is dropped
(and counted); cluster names become metric labels only up to ``MAX_CLUSTER_LABELS``,
then ``_other``.

Served on the same grpc server (and port) as ADS: the bootstrap points both at the same
cluster. ``close()`` ends the streams before the server stops, like ``AdsServer.close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from envoy.service.load_stats.v3 import lrs_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.xds.requests import BadRequest, lenient, read_first

__all__ = [
    "LRS_METHOD",
    "LRS_SERVICE",
    "MAX_CLUSTER_LABELS",
    "MAX_REPORTED_COUNT",
    "ClusterLoad",
    "EndpointLoad",
    "LoadReport",
    "LrsMetrics",
    "LrsServer",
    "parse_report",
]

log = logging.getLogger(__name__)

LRS_SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
LRS_METHOD = "StreamLoadStats"

MAX_REPORTED_COUNT = 2**40
"""A cluster entry reporting more requests than this (in one interval of about a second)
is garbage and dropped: the counts are uint64, and 2**64-1 added up would overflow the
Redis counters the rollback judge reads."""

MAX_CLUSTER_LABELS = 1000
"""Distinct ``cluster`` label values of ``aixds_lrs_requests``; later clusters are counted
under ``_other`` so that invented names cannot grow the metrics without bound."""


@dataclass(frozen=True, slots=True)
class EndpointLoad:
    address: str
    """``ip:port`` of the upstream host."""
    success: int
    error: int
    issued: int
    in_progress: int


@dataclass(frozen=True, slots=True)
class ClusterLoad:
    cluster: str
    success: int
    error: int
    issued: int
    in_progress: int
    dropped: int
    endpoints: tuple[EndpointLoad, ...]


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One LRS message: what one Envoy saw since its previous report."""

    node_id: str
    at: float
    """Wall clock when the control plane received it."""
    interval_s: float
    """The span Envoy says it covers (0 if it did not say)."""
    clusters: tuple[ClusterLoad, ...]


LoadSink = Callable[[LoadReport], None]


def parse_report(node_id: str, req: Any, at: float) -> LoadReport:
    """A ``LoadStatsRequest`` -> ``LoadReport`` (localities summed per cluster)."""
    clusters = []
    interval = 0.0
    for cs in req.cluster_stats:
        ok = err = issued = inflight = 0
        eps: list[EndpointLoad] = []
        for loc in cs.upstream_locality_stats:
            ok += loc.total_successful_requests
            err += loc.total_error_requests
            issued += loc.total_issued_requests
            inflight += loc.total_requests_in_progress
            for ep in loc.upstream_endpoint_stats:
                sa = ep.address.socket_address
                eps.append(
                    EndpointLoad(
                        address=f"{sa.address}:{sa.port_value}",
                        success=ep.total_successful_requests,
                        error=ep.total_error_requests,
                        issued=ep.total_issued_requests,
                        in_progress=ep.total_requests_in_progress,
                    )
                )
        if cs.HasField("load_report_interval"):
            interval = max(interval, cs.load_report_interval.ToNanoseconds() / 1e9)
        clusters.append(
            ClusterLoad(
                cluster=cs.cluster_name,
                success=ok,
                error=err,
                issued=issued,
                in_progress=inflight,
                dropped=cs.total_dropped_requests,
                endpoints=tuple(sorted(eps, key=lambda e: e.address)),
            )
        )
    return LoadReport(node_id, at, interval, tuple(clusters))


class LrsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "aixds_lrs_streams", "LRS streams open now (Envoys reporting load)", registry=registry
        )
        self.reports = Counter(
            "aixds_lrs_reports", "Load reports received from Envoys", registry=registry
        )
        self.requests = Counter(
            "aixds_lrs_requests",
            "Requests Envoys reported over LRS, by cluster and outcome (success, error)",
            ["cluster", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "aixds_lrs_dropped_cluster_stats",
            f"Cluster entries of load reports dropped as implausible (a count over "
            f"{MAX_REPORTED_COUNT})",
            registry=registry,
        )
        self._labels: set[str] = set()

    def cluster_label(self, cluster: str) -> str:
        """``cluster``, or ``_other`` once ``MAX_CLUSTER_LABELS`` others are in use."""
        if cluster in self._labels:
            return cluster
        if len(self._labels) >= MAX_CLUSTER_LABELS:
            return "_other"
        self._labels.add(cluster)
        return cluster


def _plausible(c: ClusterLoad) -> bool:
    counts = (c.success, c.error, c.issued, c.in_progress, c.dropped)
    return all(n <= MAX_REPORTED_COUNT for n in counts) and all(
        e.success <= MAX_REPORTED_COUNT
        and e.error <= MAX_REPORTED_COUNT
        and e.issued <= MAX_REPORTED_COUNT
        and e.in_progress <= MAX_REPORTED_COUNT
        for e in c.endpoints
    )


class LrsServer:
    """The LRS servicer; register :meth:`generic_handler` on the xDS grpc server."""

    def __init__(
        self,
        sink: LoadSink,
        metrics: LrsMetrics,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._m = metrics
        self.interval_s = interval_s
        self._clock = clock
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.streams: dict[int, dict[str, Any]] = {}
        """Per open stream: node id, peer, connected_at, reports."""

    def generic_handler(self) -> Any:
        method = grpc.stream_stream_rpc_method_handler(
            self.StreamLoadStats,
            request_deserializer=lenient(lrs_pb2.LoadStatsRequest.FromString),
            response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(LRS_SERVICE, {LRS_METHOD: method})

    def _response(self) -> Any:
        resp = lrs_pb2.LoadStatsResponse(send_all_clusters=True, report_endpoint_granularity=True)
        resp.load_reporting_interval.FromNanoseconds(round(self.interval_s * 1e9))
        return resp

    async def StreamLoadStats(self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        if self._closing:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("control plane shutting down")
            return
        first = await read_first(context, "LoadStatsRequest")
        if first is None:
            return
        n = next(self._ids)
        node_id: str = first.node.id
        info: dict[str, Any] = {
            "node_id": node_id,
            "peer": context.peer(),
            "connected_at": self._clock(),
            "reports": 0,
        }
        self.streams[n] = info
        self._m.streams.inc()
        log.info("LRS stream %d from %s", n, node_id or info["peer"])
        # The stream's work runs in its own task so close() can end it while the handler
        # returns normally (grpc logs an error for every handler it must cancel itself).
        task = asyncio.create_task(self._serve(node_id, first, info, context), name=f"lrs-{n}")
        self._tasks.add(task)
        try:
            await asyncio.wait([task])  # returns when it ends, also if close() cancelled it
            if not task.cancelled() and isinstance(exc := task.exception(), BadRequest):
                log.warning("LRS stream %d from %s refused: %s", n, node_id, exc.reason)
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(exc.reason)
            elif not task.cancelled() and (exc := task.exception()) is not None:
                log.warning("LRS stream %d from %s failed: %r", n, node_id, exc)
        finally:
            self._tasks.discard(task)
            task.cancel()
            self._m.streams.dec()
            del self.streams[n]
            log.info("LRS stream %d from %s closed", n, node_id or "?")
        if self._closing:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("control plane shutting down")

    async def _serve(self, node_id: str, first: Any, info: dict[str, Any], context: Any) -> None:
        await context.write(self._response())
        self._accept(node_id, first, info)
        while (req := await context.read()) is not grpc.aio.EOF:
            if isinstance(req, BadRequest):
                raise req
            self._accept(node_id, req, info)

    def _accept(self, node_id: str, req: Any, info: dict[str, Any]) -> None:
        if not req.cluster_stats:
            return
        report = parse_report(node_id, req, self._clock())
        clusters = tuple(c for c in report.clusters if _plausible(c))
        if len(clusters) < len(report.clusters):
            self._m.dropped.inc(len(report.clusters) - len(clusters))
            report = replace(report, clusters=clusters)
        info["reports"] += 1
        self._m.reports.inc()
        for c in clusters:
            label = self._m.cluster_label(c.cluster)
            if c.success:
                self._m.requests.labels(label, "success").inc(c.success)
            if c.error:
                self._m.requests.labels(label, "error").inc(c.error)
        try:
            self._sink(report)
        except Exception:
            log.exception("load report sink failed")

    async def close(self, within: float = 0.5) -> None:
        """End every stream and refuse new ones, waiting up to ``within`` seconds."""
        self._closing = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=within)
