"""Typed settings of ``aixds serve``, one docstring per field, and the fleet config file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from controlplane.decide.rollback import RollbackPolicy
from controlplane.decide.rollout import RolloutPolicy
from controlplane.fleet import redis_url
from controlplane.fleet.redis_url import RedisUrlError
from controlplane.intent import Intent
from controlplane.runtime.placement_loop import PlacementSettings
from controlplane.tls import TlsError, check_server_files

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class ServeSettings:
    redis_url: str = ""
    """Where this region's fleet registry and the intent live; empty: fleet.yaml's URL of
    ``region`` (per-region form), else ``redis://127.0.0.1:6379/0``."""
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    """gRPC ADS server address Envoys connect to."""
    api_host: str = "127.0.0.1"
    api_port: int = 18080
    """HTTP config API, ``/metrics`` and ``/healthz``."""
    config: Path | None = None
    """Optional fleet.yaml: region distances, session header, each region's Redis."""
    region: str = ""
    """This control plane's region (``--region``). With fleet.yaml's per-region form it
    reads ``redis_url`` (its own region's registry) and every other region's registry."""
    region_grace_s: float = 10.0
    """A remote region whose registry is unreachable or silent this long is lost: its
    replicas are demoted (not fresh) after half of it and removed after all of it."""
    coalesce_ms: float = 2.0
    """Changes arriving within this window are decided together."""
    resync_s: float = 5.0
    """Full re-read of the registry, on top of events."""
    recovery_grace_s: float = 5.0
    """After Redis comes back, replicas missing from it are kept this long."""
    xds_grace_s: float = 1.0
    """On shutdown, open xDS streams get this long before they are cut."""
    test_hooks: bool = False
    """Enable test-only API switches (never in production)."""
    api_token: str = ""
    """An admin token, named ``api-token`` (``--api-token`` or ``AIXDS_API_TOKEN``). With no
    token that may write at all, the API is read-only and refuses writes with 403 saying
    how to enable them."""
    tokens_file: Path | None = None
    """Named tokens with scopes (``--tokens-file``; format in ``api.tokens``)."""
    tokens_env: str = ""
    """More named tokens, in the same format (the ``AIXDS_API_TOKENS`` variable)."""
    require_read_token: bool = False
    """Reads (``GET /v1/...``, ``/metrics``) need a token with scope read too; ``/healthz``
    stays open."""
    audit_max_len: int = 10_000
    """Entries the audit log keeps (approximately: ``XADD MAXLEN ~``)."""
    min_ready: int = 1
    """Ready replicas a version needs before it may take traffic (switch, canary, promote)."""
    drain_settle_s: float = 1.0
    """After routes move off a version, its endpoints stay HEALTHY this long (so Envoy has
    the new routes before any host of the old version is DRAINING), then turn DRAINING."""
    drain_s: float = 30.0
    """A draining version's endpoints stay DRAINING this long before its cluster is removed
    (bounds how long an in-flight request on it may take)."""
    apply_timeout_s: float = 2.0
    """A rollout change is answered once this replica's Envoys ACKed it, or after this."""
    intent_resync_s: float = 5.0
    """Periodic re-read of the intent, on top of the intent-events channel."""
    lrs_interval_s: float = 1.0
    """The load-reporting interval Envoys are told to use (LRS)."""
    load_flush_s: float = 0.25
    """How often received load reports are added to the shared per-second counts in Redis."""
    auto_rollback: bool = True
    """Roll canaries back automatically on errors (False: judge and report only)."""
    rollback_interval_s: float = 0.5
    """How often canaries are judged (and the rollback lock renewed)."""
    rollback_window_s: float = 10.0
    """Seconds of load reports a canary is judged on (fewer if it is younger)."""
    rollback_min_requests: int = 20
    """Canary requests needed in the window before it can be judged."""
    rollback_margin: float = 0.05
    """Roll back when the canary's error rate exceeds the stable's by more than this."""
    rollback_z: float = 2.5
    """...judged in the canary's favour by this many standard errors (Wilson bounds)."""
    serving_version_interval_s: float = 1.0
    """How often serving versions are checked (and their lock renewed) besides every change
    of the fleet or intent: a model seen for the first time gets its version recorded."""
    leader_ttl_s: float = 5.0
    """TTL of the locks that pick the acting replica (automatic rollback, serving-version
    recording): how soon another replica acts if the holder dies."""
    activator_host: str = ""
    activator_port: int = 0
    """Where the activator listens (``--activator``); port 0: no activator, and a model
    that is served nowhere answers 404 instead of waiting for a load."""
    activator_advertise: tuple[tuple[str, int], ...] = ()
    """The activator addresses Envoys are given (every control plane's, the same list on
    each); empty: this one's own listen address."""
    hold_s: float = 120.0
    """Longest the activator holds a request for a model being loaded."""
    placement: PlacementSettings = field(default_factory=PlacementSettings)
    """Model placement and predictive warm-up (``runtime.placement_loop``)."""
    instance_id: str = ""
    """This replica's name in those locks; empty: ``host:pid:random``."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    """The control plane's certificate and key (PEM): the xDS/LRS port and the API are
    served over TLS with them (``--tls-cert``/``--tls-key``); none: plaintext."""
    client_ca: Path | None = None
    """CA whose certificates Envoys must present on the xDS/LRS port (``--client-ca``):
    mutual TLS; a plaintext Envoy or one without such a certificate gets nothing."""
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    """A separate certificate for the API (``--api-tls-cert``/``--api-tls-key``); none: the
    API uses ``tls_cert``/``tls_key`` (plaintext when those are unset too)."""

    def api_tls(self) -> tuple[Path, Path] | None:
        """The API's certificate and key, or None for a plaintext API."""
        if self.api_tls_cert is not None and self.api_tls_key is not None:
            return self.api_tls_cert, self.api_tls_key
        if self.tls_cert is not None and self.tls_key is not None:
            return self.tls_cert, self.tls_key
        return None

    def xds_security(self) -> str:
        """How Envoys connect, in words (for the start-up log line)."""
        if self.tls_cert is None:
            return "plaintext"
        return "mutual TLS" if self.client_ca is not None else "TLS, no client certificates"

    def check_tls(self) -> None:
        """Raise ``ConfigError`` for an incomplete or unusable set of TLS files."""
        pairs = (
            ("--tls-cert", self.tls_cert, "--tls-key", self.tls_key),
            ("--api-tls-cert", self.api_tls_cert, "--api-tls-key", self.api_tls_key),
        )
        for cflag, cert, kflag, key in pairs:
            if (cert is None) != (key is None):
                raise ConfigError(f"{cflag} and {kflag} go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ConfigError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        try:
            if self.tls_cert is not None and self.tls_key is not None:
                check_server_files(self.tls_cert, self.tls_key, self.client_ca)
            if self.api_tls_cert is not None and self.api_tls_key is not None:
                check_server_files(
                    self.api_tls_cert, self.api_tls_key, flags="--api-tls-cert/--api-tls-key"
                )
        except TlsError as e:
            raise ConfigError(str(e)) from None

    def activators(self) -> tuple[tuple[str, int], ...]:
        """The activator cluster's endpoints (empty: no activator)."""
        if not self.activator_port:
            return ()
        return self.activator_advertise or ((self.activator_host, self.activator_port),)

    def rollout_policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            min_ready=self.min_ready, drain_settle_s=self.drain_settle_s, drain_s=self.drain_s
        )

    def rollback_policy(self) -> RollbackPolicy:
        return RollbackPolicy(
            window_s=self.rollback_window_s,
            min_requests=self.rollback_min_requests,
            margin=self.rollback_margin,
            z=self.rollback_z,
        )


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The optional fleet.yaml file."""

    region_distance: dict[str, dict[str, int]] = field(default_factory=dict)
    region_redis: dict[str, str] = field(default_factory=dict)
    """Each region's registry URL (the per-region form); empty: one Redis for all."""
    session_header: str = "x-session-id"
    affinity_default: bool = True
    affinity_models: dict[str, bool] = field(default_factory=dict)
    intent_home: str = ""
    """The region whose intent Redis is the writable primary (``intent.home``); empty:
    intent lives in each control plane's local registry (no replication)."""
    version_headers: bool = True
    """Answers carry ``x-aixds-version`` and ``x-aixds-regions-differ`` (False: they do not
    name versions and regions to clients)."""
    region_intent: dict[str, str] = field(default_factory=dict)
    """Each region's intent Redis (``regions.R.intent_redis``): the home's is the primary,
    the others are Redis replicas (``replicaof``) of it."""

    def intent_topology(self, region: str) -> IntentTopology | None:
        """Where ``aixds serve --region R`` reads and writes intent; None: in its registry."""
        if not self.intent_home:
            return None
        if region not in self.region_intent:
            raise ConfigError(
                f"fleet.yaml replicates intent: --region must be one of "
                f"{sorted(self.region_intent)}, got {region!r}"
            )
        return IntentTopology(home=self.intent_home, local=region, urls=dict(self.region_intent))

    def registries(self, region: str, redis_url: str) -> dict[str, str]:
        """Region -> registry URL that ``aixds serve --region R --redis URL`` reads, the
        local region first; with one Redis for all, ``{region: redis_url}`` alone."""
        if not self.region_redis:
            return {region: redis_url or DEFAULT_REDIS}
        if region not in self.region_redis:
            raise ConfigError(
                f"fleet.yaml gives each region its own Redis: --region must be one of "
                f"{sorted(self.region_redis)}, got {region!r}"
            )
        own = self.region_redis[region]
        if redis_url and redis_url != own:
            raise ConfigError(
                f"--redis {redis_url} is not fleet.yaml's registry of {region} ({own}); "
                "leave --redis out or make them match"
            )
        return {region: own, **{r: u for r, u in self.region_redis.items() if r != region}}

    def base_intent(self) -> Intent:
        return Intent(
            region_distance=MappingProxyType(
                {k: MappingProxyType(dict(v)) for k, v in self.region_distance.items()}
            ),
            session_header=self.session_header,
            affinity_base=MappingProxyType(dict(self.affinity_models)),
            affinity_default=self.affinity_default,
            version_headers=self.version_headers,
        )


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class IntentTopology:
    """Replicated intent as one control plane sees it (fleet.yaml ``intent.home``)."""

    home: str
    """The region whose intent Redis is the primary: every write goes there."""
    local: str
    """This control plane's region: it reads and watches its own region's copy."""
    urls: dict[str, str]
    """Region -> its intent Redis URL (the home's primary, the others' replicas)."""

    @property
    def is_home(self) -> bool:
        return self.home == self.local

    @property
    def home_url(self) -> str:
        return self.urls[self.home]

    @property
    def local_url(self) -> str:
        return self.urls[self.local]


def load_fleet_config(path: Path | None) -> FleetConfig:
    """Read fleet.yaml; a clear ``ConfigError`` for anything that does not fit.

    Example (a registry per region; the older form ``us-east: {us-west: 10}``, a bare
    distance map per region with one Redis for all, is still accepted, not mixed)::

        regions:
          us-east:
            redis: redis://10.0.0.1:6379/0
            distance: {us-west: 10, eu-west: 80}
          eu-west:
            redis: redis://10.1.0.1:6379/0
            distance: {us-east: 80, us-west: 90}
        session_header: x-session-id
        affinity:                  # session affinity (default: on for every model)
          default: true
          models: {embed-small: false}
        version_headers: false     # no x-aixds-version / x-aixds-regions-differ in answers

    Replicated intent (per-region form only): ``intent: {home: us-east}`` and every region
    an ``intent_redis: URL``; the home's is the primary, the others replicate it.
    """
    if path is None:
        return FleetConfig()
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = set(doc) - {"regions", "session_header", "affinity", "intent", "version_headers"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    dist, redis_urls, intent_urls = _regions(path, doc.get("regions", {}))
    home = _intent_home(path, doc.get("intent"), redis_urls, intent_urls)
    header = doc.get("session_header", "x-session-id")
    if not isinstance(header, str) or not header:
        raise ConfigError(f"{path}: session_header must be a non-empty string")
    default, models = _affinity(path, doc.get("affinity", {}))
    version_headers = doc.get("version_headers", True)
    if not isinstance(version_headers, bool):
        raise ConfigError(f"{path}: version_headers must be true or false")
    return FleetConfig(
        region_distance=dist,
        region_redis=redis_urls,
        session_header=header.lower(),
        affinity_default=default,
        affinity_models=models,
        version_headers=version_headers,
        intent_home=home,
        region_intent=intent_urls if home else {},
    )


def _regions(
    path: Path, doc: Any
) -> tuple[dict[str, dict[str, int]], dict[str, str], dict[str, str]]:
    """fleet.yaml's ``regions``: either every region ``{redis: URL, distance: {R: N},
    intent_redis: URL}`` (``intent_redis`` optional) or every region a bare ``{R: N}``
    (one Redis for all). Returns distances, registry URLs, intent Redis URLs."""
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: 'regions' must map a region to {{redis, distance}}")
    dist: dict[str, dict[str, int]] = {}
    urls: dict[str, str] = {}
    intent_urls: dict[str, str] = {}
    forms: dict[str, str] = {}
    for r, body in doc.items():
        r = str(r)
        body = body or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: regions.{r} must be a mapping")
        if "redis" in body or "distance" in body:
            forms[r] = "per-region"
            extra = set(body) - {"redis", "distance", "intent_redis"}
            if extra:
                raise ConfigError(f"{path}: regions.{r}: unknown keys {sorted(extra)}")
            urls[r] = _redis_url(path, f"regions.{r}.redis", body.get("redis"))
            if "intent_redis" in body:
                where = f"regions.{r}.intent_redis"
                intent_urls[r] = _redis_url(path, where, body["intent_redis"])
            others = body.get("distance", {}) or {}
            where = f"regions.{r}.distance"
        else:
            forms[r] = "distance-only"
            others = body
            where = f"regions.{r}"
        if not isinstance(others, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in others.items()
        ):
            raise ConfigError(f"{path}: {where} must map region names to distances >= 0")
        dist[r] = dict(others)
    if len(set(forms.values())) > 1:
        old = sorted(r for r, f in forms.items() if f == "distance-only")
        raise ConfigError(
            f"{path}: regions mixes the per-region form ({{redis, distance}}) with bare "
            f"distance maps ({', '.join(old)}); give every region 'redis' and 'distance'"
        )
    return dist, urls, intent_urls


def _redis_url(path: Path, where: str, url: Any) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{path}: {where} must be a Redis URL: {redis_url.FORMS}")
    try:
        redis_url.parse(url)
    except RedisUrlError as e:
        raise ConfigError(f"{path}: {where}: {e}") from None
    return url


def _intent_home(
    path: Path, doc: Any, registries: dict[str, str], intent_urls: dict[str, str]
) -> str:
    """fleet.yaml's ``intent: {home: R}``, checked against the regions' ``intent_redis``."""
    if doc is None:
        if intent_urls:
            raise ConfigError(
                f"{path}: regions {sorted(intent_urls)} give an intent_redis but no "
                "'intent: {home: REGION}' says which region's is the writable primary"
            )
        return ""
    if not isinstance(doc, dict) or set(doc) != {"home"}:
        raise ConfigError(f"{path}: 'intent' takes exactly 'home: REGION'")
    home = doc["home"]
    if not registries:
        raise ConfigError(
            f"{path}: intent.home needs the per-region form "
            "(regions: {R: {redis, intent_redis, distance}})"
        )
    if not isinstance(home, str) or home not in registries:
        raise ConfigError(f"{path}: intent.home must be one of {sorted(registries)}, got {home!r}")
    missing = sorted(set(registries) - set(intent_urls))
    if missing:
        raise ConfigError(
            f"{path}: intent.home is set, so every region needs 'intent_redis' "
            f"(its copy of the intent); missing in {', '.join(missing)}"
        )
    seen: dict[str, str] = {}
    for r, url in sorted(intent_urls.items()):
        if url in seen:
            raise ConfigError(
                f"{path}: regions {seen[url]} and {r} have the same intent_redis {url}; "
                "each region needs its own copy (the home's primary or a replica of it)"
            )
        seen[url] = r
        if r != home and url == registries[r]:
            raise ConfigError(
                f"{path}: regions.{r}.intent_redis is its registry ({url}), but outside the "
                f"home ({home}) it must be a read-only replica of the home's intent Redis "
                "and agents write to the registry: give it its own Redis"
            )
    return home


def _affinity(path: Path, doc: Any) -> tuple[bool, dict[str, bool]]:
    """fleet.yaml's ``affinity: {default: BOOL, models: {MODEL: BOOL}}``."""
    doc = doc or {}
    if not isinstance(doc, dict) or set(doc) - {"default", "models"}:
        raise ConfigError(f"{path}: 'affinity' takes 'default: true|false' and 'models'")
    default = doc.get("default", True)
    if not isinstance(default, bool):
        raise ConfigError(f"{path}: affinity.default must be true or false")
    models = doc.get("models", {}) or {}
    if not isinstance(models, dict) or not all(
        isinstance(k, str) and k and isinstance(v, bool) for k, v in models.items()
    ):
        raise ConfigError(f"{path}: affinity.models must map model names to true or false")
    return default, dict(models)
