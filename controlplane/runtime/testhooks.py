"""Test-only resource mutation: an invalid cluster that Envoy must NACK.

Enabled only by ``aixds serve --test-hooks``; end-to-end tests use it to check that a NACKed
config is never re-sent and that the last good config keeps serving.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from controlplane.api.app import TestHooks
from controlplane.runtime.reconcile import ResourceHook
from controlplane.xds import resources as rt

INVALID_CLUSTER = "aixds-test-invalid"


def invalid_cluster_hook(hooks: TestHooks) -> ResourceHook:
    def hook(res: dict[str, list[object]]) -> None:
        if hooks.invalid_xds:
            bad = cluster_pb2.Cluster(name=INVALID_CLUSTER, type=cluster_pb2.Cluster.STATIC)
            bad.connect_timeout.seconds = -1  # Envoy's validation rejects a negative duration
            res.setdefault(rt.CLUSTER, []).append(bad)

    return hook
