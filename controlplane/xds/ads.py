"""State-of-the-World ADS server on ``grpc.aio``.

One :class:`AdsServer` serves ``AggregatedDiscoveryService.StreamAggregatedResources`` for
every Envoy. Per stream and type it tracks the sent version and nonce, the ACKed version
and the subscribed names:

* ACK: ``response_nonce`` is the latest nonce sent for the type and ``version_info`` the
  version sent with it. NACK: ``error_detail`` set; the version stays at the last accepted
  one. A NACKed (type, version) is recorded in the cache for the whole node group, counted
  and logged, and never sent to that group again; the next different version is.
* A request whose non-empty nonce is not the latest one sent for its type is stale and
  ignored.
* A request repeating a nonce that was already ACKed or NACKed is a new request (Envoy
  re-sends its EDS request that way when a cluster changes) and is answered at once with a
  new nonce. So is a changed set of subscribed names, and an empty nonce (a new or
  reconnected stream: everything is resent).
* Make-before-break: types are sent in ``SEND_ORDER`` (CDS, EDS, LDS, RDS); a type is not
  sent while its previous response awaits an ACK/NACK, and a new version of a type waits
  until every earlier type is ACKed, so routes never reach Envoy before the clusters
  they use. Exception: Envoy ACKs a changed cluster (listener) only after it has warmed
  with its endpoints (routes), so Envoy's own request for EDS (RDS) is answered while
  only CDS (LDS) is awaiting; waiting for that ACK would leave the cluster warming
  until ``initial_fetch_timeout`` (15 s).
* Each stream has its own sender task that sends the LATEST snapshot: a slow stream holds
  at most one pending update (its wake flag) and never delays another.
* Responses are serialized once per (type, version, name set) by the snapshot; a stream
  appends its nonce field to the shared bytes and grpc sends them as they are (the
  method is registered with an identity response serializer).
* EDS and RDS pushes carry only the resources that changed since the stream's last ACKed
  response (Envoy keeps the others: SotW EDS/RDS responses update only what they
  carry). A new or repeated request, a changed name set, or a NACK before, gets the
  full requested set. Changes are cached per (name set, base version) like full
  responses, so every stream of a group at the same version shares the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.xds.cache import NackRecord, NodeInfo, SnapshotCache, Watch
from controlplane.xds.requests import BadRequest, lenient, read_first
from controlplane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SEND_ORDER,
    SHORT_NAMES,
    WILDCARD_TYPES,
)
from controlplane.xds.snapshot import Response, Snapshot

__all__ = [
    "ADS_METHOD",
    "ADS_SERVICE",
    "CONVERGENCE_BUCKETS",
    "MAX_REQUEST_BYTES",
    "AckHook",
    "AdsMetrics",
    "AdsServer",
    "server_options",
    "start_xds_server",
    "stop_xds_server",
    "tune_gc",
]

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHOD = "StreamAggregatedResources"

CONVERGENCE_BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Seconds, 1 ms .. 10 s."""

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest request message accepted (``grpc.max_receive_message_length``); a larger one
ends its stream with RESOURCE_EXHAUSTED. Envoy's requests are small (its node, a few KB
to tens of KB, and its subscribed names: 100,000 EDS names are about 1.5 MB)."""

_NACK_LOG_TAIL = 400
"""Characters of ``error_detail`` logged: Envoy puts the reason at the end."""

AckHook = Callable[[str, str, str, str], None]
"""``on_ack(group, node_id, type_url, version)``, called for every ACK."""


class AdsMetrics:
    """The ADS server's Prometheus metrics, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connected = Gauge(
            "aixds_xds_connected_envoys",
            "ADS streams open now, by node group.",
            ["group"],
            registry=registry,
        )
        self.pushes = Counter(
            "aixds_xds_pushes",
            "Discovery responses sent, by type (cds, eds, lds, rds).",
            ["type"],
            registry=registry,
        )
        self.nacks = Counter(
            "aixds_xds_nacks",
            "Discovery responses rejected by Envoy, by type and node group.",
            ["type", "group"],
            registry=registry,
        )
        self.convergence = Histogram(
            "aixds_xds_convergence_seconds",
            "From set_snapshot (or the stream's connect, if later) to the stream's ACK of "
            "that version, by type and node group.",
            ["type", "group"],
            buckets=CONVERGENCE_BUCKETS,
            registry=registry,
        )


def tune_gc(gen0_threshold: int = 20_000) -> None:
    """Raise the garbage collector's first-generation threshold; call once at startup of
    a process that serves many ADS streams.

    Each grpc.aio read and write allocates a few GC-tracked objects while thousands of
    in-flight ones stay alive; with the default threshold (700) the collector scans
    those every few hundred messages. Measured with ``bench.fanout`` at 1,000 streams:
    10-20% of the server's CPU per push, mostly gone at 20,000.
    """
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0_threshold, 1), gen1, gen2)


def server_options(
    *, keepalive_time_s: float = 30.0, keepalive_timeout_s: float = 10.0
) -> list[tuple[str, int]]:
    """grpc server options for Envoy clients (see ENVOY-NOTES: keepalive pings)."""
    return [
        # Envoy's connection_keepalive may ping often: never answer GOAWAY "too many pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        # Find Envoys that vanished without closing their connection.
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        # Fail to bind a port another process holds instead of silently sharing it.
        ("grpc.so_reuseport", 0),
        # Streams are many and messages small: BDP probe pings (sent as data arrives) cost
        # ~20% of the server's CPU at 1,000 streams (bench.fanout) and buy nothing here.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ]


_WARMED_BY = {ENDPOINT: CLUSTER, ROUTE: LISTENER}
"""Envoy requests these types to warm the resources of the type they map to, before it
ACKs that type's response (measured on Envoy 1.40: after a cluster changes, its EDS
re-request comes first and the CDS ACK only once the cluster is warm)."""


def _short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url) or type_url.rsplit(".", 1)[-1]


class _TypeState:
    """One type on one stream."""

    __slots__ = (
        "acked_version",
        "awaiting",
        "base",
        "force",
        "hist",
        "intern",
        "last_nack",
        "names",
        "pushes",
        "raw_names",
        "sent",
        "sent_at",
        "sent_nonce",
        "sent_version",
        "short",
        "subscribed",
        "type_url",
    )

    def __init__(self, type_url: str, stream: _Stream) -> None:
        self.type_url = type_url
        self.short = _short(type_url)
        self.subscribed = False
        self.names: frozenset[str] | None = None
        """Requested names; ``None`` = all (wildcard types, or an empty list)."""
        self.raw_names: list[str] = []
        self.sent_version: str | None = None
        self.sent_nonce: str | None = None
        self.sent_at = 0.0
        """Start of the convergence interval for the version sent last."""
        self.awaiting = False
        """The response with ``sent_nonce`` has had no ACK/NACK yet."""
        self.force = False
        """Answer the next opportunity even if the version is the one sent last."""
        self.acked_version: str | None = None
        self.sent: Response | None = None
        self.base: Response | None = None
        """The response last ACKed: what Envoy holds, to send EDS/RDS changes against."""
        self.last_nack: NackRecord | None = None
        self.intern = stream.server.intern_names
        metrics = stream.server.metrics
        self.pushes = metrics.pushes.labels(self.short)
        self.hist = metrics.convergence.labels(self.short, stream.group)

    def set_names(self, requested: Sequence[str]) -> None:
        """Apply the request's resource names; a changed set forces an answer."""
        if self.type_url in WILDCARD_TYPES:
            return
        # Envoy repeats the same list in every ACK: compare it as a list first (cheaper
        # than building a set from the protobuf container on every request).
        if len(requested) == len(self.raw_names) and requested == self.raw_names:
            return
        self.raw_names = list(requested)
        names = self.intern(frozenset(self.raw_names)) if self.raw_names else None
        if names != self.names:
            self.names = names
            self.request()

    def request(self) -> None:
        """Envoy asked: answer even with the version sent last, and with every requested
        resource (it may be re-creating clusters that need their endpoints)."""
        self.force = True
        self.base = None


class _Stream:
    """One Envoy's ADS stream: request handling, and the choice of what to send next."""

    def __init__(self, server: AdsServer, node: NodeInfo, group: str, peer: str) -> None:
        self.server = server
        self.cache = server.cache
        self.node = node
        self.group = group
        self.peer = peer
        self.connected_at = time.monotonic()
        self.connected_wall = time.time()
        self.wake = asyncio.Event()
        self.watch: Watch | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.states: dict[str, _TypeState] = {}
        self.order: list[_TypeState] = []

    def state(self, type_url: str) -> _TypeState:
        st = self.states.get(type_url)
        if st is None:
            st = self.states[type_url] = _TypeState(type_url, self)
            rank = {u: i for i, u in enumerate(SEND_ORDER)}
            self.order = sorted(self.states.values(), key=lambda s: rank.get(s.type_url, 99))
        return st

    # -- requests --------------------------------------------------------------------------

    def on_request(self, req: Any) -> None:
        """Apply one DiscoveryRequest; wakes the sender if there is something to send."""
        type_url: str = req.type_url
        if type_url not in SHORT_NAMES:
            # Not served here (or no type at all): never answered, and no per-type state
            # or metric series, however many distinct URLs a client invents.
            log.debug("%s: request for type %r ignored", self.node.node_id, type_url[:200])
            return
        st = self.state(type_url)
        nonce: str = req.response_nonce
        if nonce and st.sent_nonce is None:
            nonce = ""  # nothing of this type was sent on this stream: a first request
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s: request version=%s nonce=%s names=%d%s",
                self.node.node_id, st.short, req.version_info or "-", nonce or "-",
                len(req.resource_names), " NACK" if req.HasField("error_detail") else "",
            )  # fmt: skip
        if nonce:
            if nonce != st.sent_nonce:
                log.debug("%s %s: stale nonce %s ignored", self.node.node_id, st.short, nonce)
                return
            if st.awaiting:
                st.awaiting = False
                if req.HasField("error_detail"):
                    self._on_nack(st, req)
                elif req.version_info == st.sent_version:
                    self._on_ack(st)
                else:
                    st.base = None
            else:
                # The nonce was answered already: a new request (EDS after a cluster change).
                st.request()
        else:
            # First request for this type on this stream: a new or reconnected Envoy.
            st.subscribed = True
            st.request()
        st.set_names(req.resource_names)
        if self.pick() is not None:
            self.wake.set()

    def _on_ack(self, st: _TypeState) -> None:
        st.acked_version = st.sent_version
        st.base = st.sent
        st.hist.observe(time.monotonic() - st.sent_at)
        hook = self.server.on_ack
        if hook is not None and st.sent_version is not None:
            try:
                hook(self.group, self.node.node_id, st.type_url, st.sent_version)
            except Exception:
                log.exception("on_ack hook failed")

    def _on_nack(self, st: _TypeState, req: Any) -> None:
        st.base = None  # Envoy may have applied part of it: send everything next time
        version = st.sent_version or ""
        detail: str = req.error_detail.message
        st.last_nack = self.cache.record_nack(
            self.group, st.type_url, version, self.node.node_id, detail
        )
        self.server.metrics.nacks.labels(st.short, self.group).inc()
        tail = " ".join(detail[-_NACK_LOG_TAIL:].split())
        if len(detail) > _NACK_LOG_TAIL:
            tail = "..." + tail
        log.warning(
            "NACK from %s (group %s) for %s version %s (still at %s): %s",
            self.node.node_id, self.group, st.short, version, req.version_info or "-", tail,
        )  # fmt: skip

    # -- responses -------------------------------------------------------------------------

    def pick(self) -> tuple[_TypeState, Response, Snapshot] | None:
        """The next response to send, if any; changes no state but dropping a request
        that can only be answered with a NACKed version.

        Walks the types in send order. A type awaiting its ACK is not sent again, and a
        change of a later type waits until every earlier type is ACKed. One exception:
        Envoy warms a cluster with its endpoints (a listener with its routes), and ACKs
        the CDS (LDS) response only after that warming, so its own request for EDS (RDS)
        is answered while only CDS (LDS) is awaiting its ACK. A NACKed version is
        skipped and blocks nothing.
        """
        snap = self.cache.get(self.group)
        if snap is None:
            return None
        awaiting: str | None = None  # the first type awaiting an ACK, if any
        for st in self.order:
            if st.awaiting:
                if awaiting is None:
                    awaiting = st.type_url
                    continue
                return None  # two types awaiting: nothing later may go
            if not st.subscribed or (
                awaiting is not None and not (st.force and _WARMED_BY.get(st.type_url) == awaiting)
            ):
                continue
            resp = snap.response(st.type_url, st.names)
            if resp is None or (resp.version == st.sent_version and not st.force):
                continue
            if self.cache.is_nacked(self.group, st.type_url, resp.version):
                st.force = False
                continue
            return st, resp, snap
        return None

    def commit(self, st: _TypeState, resp: Response, snap: Snapshot) -> bytes:
        """Record ``resp`` as sent on this stream and return its bytes with a fresh nonce.

        EDS and RDS carry only the resources changed since the last ACKed response,
        unless Envoy asked since (a new or repeated request, other names) or NACKed.
        """
        if st.base is not None and st.type_url not in WILDCARD_TYPES:
            resp = snap.changes(st.type_url, st.names, st.base) or resp
        st.sent = resp
        nonce = self.server.next_nonce()
        changed = self.cache.changed_at(self.group, st.type_url) or self.connected_at
        st.sent_version = resp.version
        st.sent_nonce = nonce
        st.sent_at = max(changed, self.connected_at)
        st.awaiting = True
        st.force = False
        st.pushes.inc()
        return resp.with_nonce(nonce)

    async def send_loop(self, context: Any) -> None:
        wake = self.wake
        while True:
            await wake.wait()
            wake.clear()
            while (picked := self.pick()) is not None:
                await context.write(self.commit(*picked))

    def status(self) -> dict[str, Any]:
        types: dict[str, Any] = {}
        for st in self.order:
            nack = st.last_nack
            types[st.short] = {
                "subscribed": st.subscribed,
                "names": None if st.names is None else sorted(st.names),
                "sent_version": st.sent_version,
                "sent_nonce": st.sent_nonce,
                "acked_version": st.acked_version,
                "awaiting_ack": st.awaiting,
                "sent_resources": None if st.sent is None else len(st.sent.names),
                "last_nack": None
                if nack is None
                else {"version": nack.version, "error_detail": nack.error_detail, "at": nack.at},
            }
        return {
            "node_id": self.node.node_id,
            "group": self.group,
            "peer": self.peer,
            "connected_at": self.connected_wall,
            "types": types,
        }


class AdsServer:
    """The SotW ADS servicer. Register it with :meth:`generic_handler` (or use
    :func:`start_xds_server`)."""

    def __init__(
        self, cache: SnapshotCache, metrics: AdsMetrics, *, on_ack: AckHook | None = None
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.on_ack = on_ack
        self._nonces = itertools.count(1)
        self._streams: set[_Stream] = set()
        self._stream_ids = itertools.count(1)
        self._closing = False
        self._drained = asyncio.Event()
        self._name_sets: dict[frozenset[str], frozenset[str]] = {}

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def intern_names(self, names: frozenset[str]) -> frozenset[str]:
        """One object per distinct name set, so that looking up a cached response by it
        is an identity check instead of comparing every name."""
        got = self._name_sets.get(names)
        if got is None:
            if len(self._name_sets) >= 10_000:
                self._name_sets.clear()
            got = self._name_sets[names] = names
        return got

    def generic_handler(self) -> Any:
        """A grpc generic handler whose responses are the bytes the servicer yields."""
        method = grpc.stream_stream_rpc_method_handler(
            self.StreamAggregatedResources,
            request_deserializer=lenient(discovery_pb2.DiscoveryRequest.FromString),
            response_serializer=None,  # identity: the servicer writes serialized bytes
        )
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {ADS_METHOD: method})

    def status(self) -> dict[str, Any]:
        """For the API: ``streams`` (per connected stream: node id, group, peer, per type
        sent/ACKed version and last NACK) and ``nacks`` (per group, the NACK records)."""
        streams = sorted(
            (s.status() for s in self._streams), key=lambda d: (d["group"], d["node_id"])
        )
        groups = sorted({s.group for s in self._streams} | set(self.cache.groups()))
        nacks = {
            g: [
                {
                    "type": _short(r.type_url),
                    "version": r.version,
                    "node_id": r.node_id,
                    "error_detail": r.error_detail,
                    "at": r.at,
                }
                for r in recs
            ]
            for g in groups
            if (recs := self.cache.nacks(g))
        }
        return {"streams": streams, "nacks": nacks}

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        # Requests are read with context.read() (one async-generator layer less per
        # message than iterating request_iterator; the two must not be mixed).
        if self._closing:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("xDS server shutting down")
            return
        first = await read_first(context, "DiscoveryRequest")
        if first is None:
            return
        node = NodeInfo.from_node(first.node)
        group = self.cache.group_of(node)
        stream = _Stream(self, node, group, context.peer())
        n = next(self._stream_ids)
        log.info("ADS stream %d from %s (group %s, %s)", n, node.node_id, group, stream.peer)
        self._streams.add(stream)
        gauge = self.metrics.connected.labels(group)
        gauge.inc()
        tasks: list[asyncio.Task[None]] = []
        try:
            stream.watch = self.cache.watch(node, stream.wake.set)
            stream.on_request(first)
            tasks.append(asyncio.create_task(stream.send_loop(context), name=f"ads-send-{n}"))
            tasks.append(asyncio.create_task(self._receive(stream, context), name=f"ads-recv-{n}"))
            stream.tasks = tasks
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and isinstance(exc := task.exception(), BadRequest):
                    log.warning("ADS stream %d (%s) refused: %s", n, node.node_id, exc.reason)
                    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    context.set_details(exc.reason)
                elif not task.cancelled() and (exc := task.exception()) is not None:
                    log.error(
                        "ADS stream %d (%s) failed in %s: %r",
                        n, node.node_id, task.get_name(), exc, exc_info=exc,
                    )  # fmt: skip
        finally:
            # Synchronous cleanup first: it must happen even if we are cancelled again.
            self._streams.discard(stream)
            gauge.dec()
            if stream.watch is not None:
                stream.watch.cancel()
            for t in tasks:
                t.cancel()
            if self._closing and not self._streams:
                self._drained.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            log.info("ADS stream %d from %s closed", n, node.node_id)
        if self._closing:
            # Envoy reconnects (to another control-plane replica, if it knows one).
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("xDS server shutting down")

    async def close(self, within: float = 1.0) -> None:
        """End every stream with UNAVAILABLE and refuse new ones; wait up to ``within``
        seconds for the handlers to finish. Call before ``server.stop()`` so that grpc
        has no stream left to force-cancel (which it logs as an error per stream)."""
        self._closing = True
        if not self._streams:
            return
        for stream in list(self._streams):
            for task in stream.tasks:
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._drained.wait()

    @staticmethod
    async def _receive(stream: _Stream, context: Any) -> None:
        read = context.read
        eof = grpc.aio.EOF
        while (req := await read()) is not eof:
            if isinstance(req, BadRequest):
                raise req
            stream.on_request(req)


async def start_xds_server(
    cache: SnapshotCache,
    host: str,
    port: int,
    registry: CollectorRegistry | AdsMetrics,
    *,
    on_ack: AckHook | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    handlers: Sequence[Any] = (),
    credentials: Any = None,
) -> tuple[Any, AdsServer]:
    """Start a ``grpc.aio.Server`` serving ADS on ``host:port``, plus any other generic
    ``handlers`` on the same port (the LRS server); over TLS when ``credentials`` (from
    ``xds.credentials.server_credentials``) are given, else plaintext.

    Returns the server (stop it with :func:`stop_xds_server`) and its :class:`AdsServer`
    (for ``status()``). Metrics go to ``registry``. Raises ``RuntimeError`` when the port
    cannot be bound.
    """
    metrics = registry if isinstance(registry, AdsMetrics) else AdsMetrics(registry)
    servicer = AdsServer(cache, metrics, on_ack=on_ack)
    server = grpc.aio.server(options=list(options) if options is not None else server_options())
    server.add_generic_rpc_handlers((servicer.generic_handler(), *handlers))
    if credentials is None:
        server.add_insecure_port(f"{host}:{port}")
    else:
        server.add_secure_port(f"{host}:{port}", credentials)
    await server.start()
    tls = " over TLS" if credentials is not None else ""
    log.info("xDS (ADS) server listening on %s:%d%s", host, port, tls)
    return server, servicer


async def stop_xds_server(server: Any, grace: float = 1.0, ads: AdsServer | None = None) -> None:
    """Stop within about ``grace`` seconds: end the streams of ``ads`` (if given), stop
    accepting new ones, then cancel whatever is still open.

    ADS streams never end by themselves, so the grace is what bounds the stop.
    """
    if ads is not None:
        await ads.close(grace / 2)
    await server.stop(grace / 2 if ads is not None else grace)
