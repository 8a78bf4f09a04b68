"""``aixds serve``: wire registry, fleet and intent watchers, reconcile loop, ADS and LRS
servers, load flushing, serving-version recording, automatic rollback, the API and the
activator (requests for models being loaded).

All loops are started in ``serve()`` through one ``Supervisor`` and stopped in reverse
order; the xDS server gets a bounded grace so open streams cannot hold shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import replace
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from controlplane.activator.app import Activator, ActivatorMetrics, ActivatorSettings
from controlplane.activator.demand import ActivatorDemand
from controlplane.activator.readiness import Readiness
from controlplane.api import ui
from controlplane.api.app import ApiContext, TestHooks, create_app
from controlplane.api.auth import Access, AccessMetrics
from controlplane.api.tokens import Scope, TokensError, TokenTable, load_tokens
from controlplane.decide import EnvoyNode
from controlplane.decide.cold import loadable_models
from controlplane.decide.eligibility import is_fresh
from controlplane.embedded_http import EmbeddedServer
from controlplane.fleet import schema
from controlplane.fleet.audit import RedisAuditLog
from controlplane.fleet.intent_replica import ReplicatedIntentStore
from controlplane.fleet.intent_store import IntentStore, RedisIntentStore
from controlplane.fleet.leader import RedisLock
from controlplane.fleet.load_store import RedisLoadStore
from controlplane.fleet.redis_url import connect, redact
from controlplane.fleet.registry import RedisRegistry
from controlplane.runtime.audit import AuditMetrics, AuditTrail
from controlplane.runtime.autorollback import AutoRollback, GuardMetrics
from controlplane.runtime.converge import Convergence
from controlplane.runtime.fleet_gauges import FleetGauges
from controlplane.runtime.fleet_watch import FleetMetrics, FleetSource, FleetWatcher
from controlplane.runtime.intent_replication import IntentReplication, ReplicationMetrics
from controlplane.runtime.intent_watch import IntentMetrics, IntentWatcher
from controlplane.runtime.load_flush import LoadAccumulator
from controlplane.runtime.placement_loop import PlacementLoop, PlacementMetrics
from controlplane.runtime.reconcile import ReconcileMetrics, Reconciler
from controlplane.runtime.regions import RegionalFleet, RegionMetrics
from controlplane.runtime.rollout_ops import RolloutMetrics, RolloutService
from controlplane.runtime.serving_version import ServingVersionMetrics, ServingVersions
from controlplane.runtime.supervisor import Supervisor
from controlplane.runtime.testhooks import invalid_cluster_hook
from controlplane.settings import ServeSettings, load_fleet_config
from controlplane.xds.ads import start_xds_server, stop_xds_server, tune_gc
from controlplane.xds.cache import NodeInfo, SnapshotCache
from controlplane.xds.credentials import server_credentials
from controlplane.xds.lrs import LrsMetrics, LrsServer

log = logging.getLogger(__name__)


def envoy_node(info: NodeInfo) -> EnvoyNode:
    md = info.metadata
    addr = str(md.get("listen_address", "127.0.0.1"))
    try:
        port = int(md.get("listen_port", 10000))
    except (TypeError, ValueError):
        port = 10000
    return EnvoyNode(
        role=info.role, region=info.region, zone=info.zone, listen_address=addr, listen_port=port
    )


def _access_summary(tokens: TokenTable, require_read: bool) -> str:
    """``3 tokens (admin: alice; operate: ci; read: grafana), reads need a token``."""
    if not len(tokens):
        return "no API token: read-only"
    by_scope = {
        sc.label: ", ".join(t.name for t in tokens.tokens if t.scope == sc)
        for sc in sorted(Scope, reverse=True)
    }
    names = "; ".join(f"{k}: {v}" for k, v in by_scope.items() if v)
    reads = "reads need a token" if require_read else "reads open"
    return f"{len(tokens)} token(s) ({names}), {reads}"


def node_group(info: NodeInfo) -> str:
    """Envoys that get the same plan: same role, region and listen address."""
    n = envoy_node(info)
    return f"{n.role}/{n.region}/{n.listen_address}:{n.listen_port}"


def _api_ssl(s: ServeSettings) -> dict[str, Any]:
    """uvicorn's TLS arguments for the API (none: plaintext)."""
    files = s.api_tls()
    return {} if files is None else {"ssl_certfile": str(files[0]), "ssl_keyfile": str(files[1])}


async def serve(s: ServeSettings) -> int:
    s.check_tls()
    fleet_cfg = load_fleet_config(s.config)
    tokens = load_tokens(api_token=s.api_token, file=s.tokens_file, env_text=s.tokens_env)
    if s.require_read_token and not len(tokens):
        raise TokensError(
            "--require-read-token needs at least one token: --api-token, --tokens-file or "
            "AIXDS_API_TOKENS"
        )
    base_intent = replace(fleet_cfg.base_intent(), activators=s.activators())
    registry = CollectorRegistry()
    urls = fleet_cfg.registries(s.region, s.redis_url)
    redis_url = urls[s.region]
    client = connect(redis_url)
    remote_clients = {r: connect(u) for r, u in urls.items() if r != s.region}
    cache = SnapshotCache(group_of=node_group)

    reconciler: Reconciler | None = None
    serving: ServingVersions | None = None
    readiness: Readiness | None = None

    def on_change() -> None:
        if reconciler is not None:
            reconciler.trigger()
        if serving is not None:
            serving.trigger()
        if readiness is not None:
            readiness.changed()

    local_watcher = FleetWatcher(
        RedisRegistry(client),
        FleetMetrics(registry),
        on_change,
        resync_interval_s=s.resync_s,
        recovery_grace_s=s.recovery_grace_s,
    )
    watcher: FleetSource = local_watcher
    watchers = {s.region: local_watcher}
    regions: RegionalFleet | None = None
    if remote_clients:
        # A remote region's watcher keeps nothing past its registry after a reconnect
        # (grace 0), reads it often enough that a quiet region is not taken for a silent
        # one, and its metrics stay unexported (the local names are not per region).
        for r, c in remote_clients.items():
            watchers[r] = FleetWatcher(
                RedisRegistry(c),
                FleetMetrics(CollectorRegistry()),
                on_change,
                resync_interval_s=min(s.resync_s, s.region_grace_s / 4),
                recovery_grace_s=0.0,
            )
        regions = RegionalFleet(
            s.region, watchers, RegionMetrics(registry), on_change, grace_s=s.region_grace_s
        )
        watcher = regions
    # Intent: in the local registry, or (fleet.yaml intent.home) read from this region's
    # intent Redis, a replica of the home's, and written to the home's primary.
    topology = fleet_cfg.intent_topology(s.region)
    intent_clients = {} if topology is None else {r: connect(u) for r, u in topology.urls.items()}
    intent_store: IntentStore = RedisIntentStore(client)
    replication: IntentReplication | None = None
    if topology is not None:
        intent_store = ReplicatedIntentStore(
            intent_clients[topology.local],
            intent_clients[topology.home],
            region=topology.local,
            home=topology.home,
            home_url=redact(topology.home_url),
        )
        replication = IntentReplication(
            topology.home, topology.local, intent_clients, ReplicationMetrics(registry)
        )
    # The audit log is written where intent is written (the home) and read from this
    # region's copy, which Redis replication keeps with the intent.
    audit = AuditTrail(
        RedisAuditLog(
            client if topology is None else intent_clients[topology.home],
            client if topology is None else intent_clients[topology.local],
            max_len=s.audit_max_len,
        ),
        AuditMetrics(registry),
    )
    intents = IntentWatcher(
        intent_store,
        base_intent,
        on_change,
        IntentMetrics(registry),
        resync_s=s.intent_resync_s,
    )
    reconciler = Reconciler(
        watcher,
        intents.current,
        cache,
        ReconcileMetrics(registry),
        coalesce_s=s.coalesce_ms / 1000.0,
        intent_ready=lambda: intents.synced,
    )
    rec = reconciler
    cache.on_new_group = lambda group, info: rec.add_group(group, envoy_node(info))

    hooks = TestHooks() if s.test_hooks else None
    if hooks is not None:
        reconciler.resource_hook = invalid_cluster_hook(hooks)

    loads = LoadAccumulator(RedisLoadStore(client), interval_s=s.load_flush_s)
    lrs = LrsServer(loads.add, LrsMetrics(registry), interval_s=s.lrs_interval_s)

    tune_gc()
    credentials = None
    if s.tls_cert is not None and s.tls_key is not None:
        credentials = server_credentials(s.tls_cert, s.tls_key, s.client_ca)
    xds_server, ads = await start_xds_server(
        cache,
        s.xds_host,
        s.xds_port,
        registry=registry,
        handlers=[lrs.generic_handler()],
        credentials=credentials,
    )

    def xds_status() -> dict[str, Any]:
        return ads.status()

    service = RolloutService(
        intent_store,
        intents,
        watcher,
        reconciler,
        s.rollout_policy(),
        RolloutMetrics(registry),
        audit=audit,
        converge=Convergence(ads, cache).wait,
        apply_timeout_s=s.apply_timeout_s,
    )
    instance = s.instance_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    serving = ServingVersions(
        service,
        intents,
        watcher,
        RedisLock(client, schema.SERVING_VERSION_LOCK_KEY, instance, s.leader_ttl_s),
        ServingVersionMetrics(registry),
        interval_s=s.serving_version_interval_s,
    )
    guard = AutoRollback(
        service,
        intents,
        RedisLoadStore(client),
        RedisLock(client, schema.ROLLBACK_LOCK_KEY, instance, s.leader_ttl_s),
        s.rollback_policy(),
        GuardMetrics(registry),
        interval_s=s.rollback_interval_s,
        enabled=s.auto_rollback,
    )
    placement = PlacementLoop(
        client,
        # Placement writes the desired-models keys of the local registry, which only the
        # local region's agents read: it places on the local region's replicas alone (each
        # region's control plane places for its own Envoys' demand), never on a node whose
        # agent would not see the decision.
        lambda: local_watcher.view,
        intents.current,
        RedisLoadStore(client),
        RedisLock(client, schema.PLACEMENT_LOCK_KEY, instance, s.leader_ttl_s),
        PlacementMetrics(registry),
        s.placement,
    )
    FleetGauges(
        registry,
        lambda: watcher.view,
        lambda: {g: st.plan for g, st in reconciler.groups.items()},
    )
    api_ctx = ApiContext(
        watcher,
        reconciler,
        registry,
        xds_status,
        hooks,
        intents=intents,
        rollouts=service,
        guard=guard,
        loads=loads,
        access=Access(tokens, require_read=s.require_read_token, metrics=AccessMetrics(registry)),
        audit=audit,
        redis=client,
        replication=replication,
        region_redis=dict(remote_clients),
    )
    app = create_app(api_ctx)
    api = EmbeddedServer(
        uvicorn.Config(
            app,
            host=s.api_host,
            port=s.api_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **_api_ssl(s),
        )
    )

    activator: Activator | None = None
    demand: ActivatorDemand | None = None
    activator_api: EmbeddedServer | None = None
    if s.activator_port:
        readiness = Readiness(lambda: watcher.view, intents.current, time.time)
        demand = ActivatorDemand(client, instance)

        def loadable() -> set[str]:
            now = time.time()
            fresh = [o for o in watcher.view.values() if is_fresh(o, now)]
            return loadable_models(fresh, intents.current())

        activator = Activator(
            readiness,
            intents.current,
            loadable,
            demand,
            ActivatorMetrics(registry),
            ActivatorSettings(hold_s=s.hold_s),
        )
        activator_api = EmbeddedServer(
            uvicorn.Config(
                activator.app,
                host=s.activator_host,
                port=s.activator_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_keep_alive=75,
            )
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    sup = Supervisor()
    for r, w in watchers.items():
        sup.spawn("fleet-watch" if r == s.region else f"fleet-watch:{r}", w.run)
    if regions is not None:
        sup.spawn("regions", regions.run)
    sup.spawn("intent-watch", intents.run)
    if replication is not None:
        sup.spawn("intent-replication", replication.run)
    sup.spawn("reconcile", reconciler.run)
    sup.spawn("load-flush", loads.run)
    sup.spawn("serving-version", serving.run)
    sup.spawn("auto-rollback", guard.run)
    sup.spawn("placement", placement.run)
    sup.spawn("ui-feed", lambda: ui.run_feed(api_ctx))
    sup.spawn("api", api.serve)
    if activator_api is not None and demand is not None:
        sup.spawn("activator-demand", demand.run)
        sup.spawn("activator", activator_api.serve)
    scheme = "http" if s.api_tls() is None else "https"
    log.info(
        "aixds serve: xDS+LRS on %s:%d (%s), API on %s://%s:%d (dashboard %s://%s:%d/ui; %s), "
        "Redis %s%s, instance %s",
        s.xds_host,
        s.xds_port,
        s.xds_security(),
        scheme,
        s.api_host,
        s.api_port,
        scheme,
        s.api_host,
        s.api_port,
        _access_summary(tokens, s.require_read_token),
        redact(redis_url),
        f" (+ registries of {', '.join(sorted(remote_clients))})" if remote_clients else "",
        instance,
    )
    if topology is not None:
        log.info(
            "intent: home %s (%s); this region reads its copy at %s",
            topology.home,
            redact(topology.home_url),
            redact(topology.local_url),
        )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await api_ctx.ui.close()  # ends the dashboards' event streams
        api.should_exit = True
        if activator is not None and activator_api is not None:
            activator.closing = True  # held requests get a 503 instead of a reset
            for _ in range(12):
                if not activator.held:
                    break
                await asyncio.sleep(0.1)
            activator_api.should_exit = True
        await sup.stop()
        if activator is not None:
            await activator.aclose()
        await lrs.close(s.xds_grace_s / 4)
        await stop_xds_server(xds_server, s.xds_grace_s, ads)
        await client.aclose()
        for c in [*remote_clients.values(), *intent_clients.values()]:
            await c.aclose()
    return 0
