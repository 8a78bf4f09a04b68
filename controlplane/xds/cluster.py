"""CDS builder: one ``ClusterIR`` (one model version) -> an Envoy ``Cluster``.

Every inference default from ENVOY-NOTES lives here: EDS over ADS, no panic mode, no
update merge window, raised retry circuit breaker, outlier detection that ejects even one
of two hosts, slow start for warming replicas, bounded-load consistent hashing for sticky
sessions. Pure: imports protobuf messages only.

``lb_policy`` with ``*_lb_config`` is used rather than ``load_balancing_policy`` typed
extensions: Envoy 1.40 does not deprecate them (checked on the proto options and by running
the binary, which logs no deprecation warning) and they behave the same.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2

from controlplane.ir import ClusterIR, LbPolicy, OutlierIR

SLOW_START_AGGRESSION_KEY = "aixds.slow_start.aggression"
"""Runtime key for the slow-start curve; 1.0 (linear) unless a runtime layer overrides it."""

SLOW_START_MIN_WEIGHT_PERCENT = 10.0
"""A warming host still gets this share of its weight from the first second."""

MAGLEV_TABLE_SIZE = 65537
"""Must be prime (Envoy's default, written out so nobody 'rounds' it)."""

_LB = {
    LbPolicy.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    LbPolicy.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    LbPolicy.RING_HASH: cluster_pb2.Cluster.RING_HASH,
    LbPolicy.MAGLEV: cluster_pb2.Cluster.MAGLEV,
}


def _outlier(od: Any, o: OutlierIR) -> None:
    """Outlier detection for slow backends, written into ``od``.

    Local-origin errors (connect failure, reset, timeout) are counted apart from HTTP
    5xx, so a GPU that stops accepting connections is ejected after
    ``consecutive_local_origin_failure`` tries. Gateway failures (502/503/504, what an
    overloaded model server answers) are enforced: Envoy's default enforcement for them is
    0 %. Repeated ejections stay at ``max_ejection_ms``: a region that returns after a
    long outage gets its traffic back within that long, not minutes later (each retry of
    a dead host is one connect failure, retried elsewhere). Success-rate ejection is off:
    it needs 100 requests per host per interval, which slow generation never reaches, and
    would only add noise.
    """
    od.consecutive_5xx.value = o.consecutive_5xx
    od.consecutive_gateway_failure.value = o.consecutive_gateway_failure
    od.enforcing_consecutive_gateway_failure.value = 100
    od.split_external_local_origin_errors = True
    od.consecutive_local_origin_failure.value = o.consecutive_local_origin_failure
    od.enforcing_consecutive_local_origin_failure.value = 100
    od.enforcing_success_rate.value = 0
    od.interval.FromMilliseconds(o.interval_ms)
    od.base_ejection_time.FromMilliseconds(o.base_ejection_ms)
    # Envoy rejects a cap below the base ejection time.
    od.max_ejection_time.FromMilliseconds(max(o.max_ejection_ms, o.base_ejection_ms))
    od.max_ejection_percent.value = o.max_ejection_percent
    od.always_eject_one_host.value = o.always_eject_one_host


def _slow_start(ss: Any, window_s: float) -> None:
    ss.slow_start_window.FromNanoseconds(round(window_s * 1e9))
    ss.aggression.CopyFrom(
        base_pb2.RuntimeDouble(default_value=1.0, runtime_key=SLOW_START_AGGRESSION_KEY)
    )
    ss.min_weight_percent.value = SLOW_START_MIN_WEIGHT_PERCENT


def _circuit_breaker(c: ClusterIR) -> Any:
    t = circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.DEFAULT, track_remaining=True
    )
    t.max_connections.value = c.max_connections
    t.max_pending_requests.value = c.max_pending_requests
    t.max_requests.value = c.max_requests
    # Envoy's default is 3 per cluster: under load most retries would overflow.
    t.max_retries.value = c.max_retries
    return t


def build_cluster(c: ClusterIR) -> Any:
    """The ``envoy.config.cluster.v3.Cluster`` for one model version (endpoints via EDS)."""
    cl = cluster_pb2.Cluster(
        name=c.name,
        type=cluster_pb2.Cluster.EDS,
        lb_policy=_LB[c.lb_policy],
        # Without active health checks this changes nothing today; with them, a host the
        # control plane removed leaves at once instead of lingering until it fails a check.
        ignore_health_on_host_removal=True,
    )
    cl.connect_timeout.FromMilliseconds(c.connect_timeout_ms)
    cl.eds_cluster_config.eds_config.CopyFrom(
        config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        )
    )

    common = cl.common_lb_config
    # No panic mode: a clean 503 beats a request to an UNHEALTHY or DRAINING GPU.
    common.healthy_panic_threshold.value = 0.0
    # Apply every EDS change (ejection, weight) at once instead of batching for 1 s.
    common.update_merge_window.FromMilliseconds(0)
    # No locality_weighted_lb_config: localities (zones) carry no weight of their own and
    # host weights already express headroom; with it on, a locality without a weight would
    # get no traffic at all.

    if c.lb_policy in (LbPolicy.RING_HASH, LbPolicy.MAGLEV) and c.hash_balance_factor > 0:
        common.consistent_hashing_lb_config.hash_balance_factor.value = c.hash_balance_factor
    if c.lb_policy == LbPolicy.MAGLEV:
        cl.maglev_lb_config.table_size.value = MAGLEV_TABLE_SIZE
    if c.slow_start_window_s > 0:
        # Envoy supports slow start for these two only; the hash policies ignore it.
        if c.lb_policy == LbPolicy.LEAST_REQUEST:
            _slow_start(cl.least_request_lb_config.slow_start_config, c.slow_start_window_s)
        elif c.lb_policy == LbPolicy.ROUND_ROBIN:
            _slow_start(cl.round_robin_lb_config.slow_start_config, c.slow_start_window_s)

    cl.circuit_breakers.thresholds.append(_circuit_breaker(c))
    _outlier(cl.outlier_detection, c.outlier)
    # A GPU node that vanishes mid-stream (no FIN) is noticed in ~1 min, not at idle timeout.
    ka = cl.upstream_connection_options.tcp_keepalive
    ka.keepalive_time.value = 30
    ka.keepalive_interval.value = 10
    ka.keepalive_probes.value = 3
    return cl
