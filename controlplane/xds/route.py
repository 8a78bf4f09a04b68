"""RDS builder: one ``RouteConfigIR`` -> an Envoy ``RouteConfiguration``.

One virtual host ``*``. Routes, first match wins:

1. ``GET /v1/models``: an OpenAI model list of the models below (direct response).
2. Per model, on the ``x-model`` header: one route per version for ``x-model-version``,
   then the weighted route across versions.
3. The same per model on the body field ``model`` (dynamic metadata written by
   ``envoy.filters.http.json_to_metadata``). Header routes come first for every model, so
   the header wins consistently when a request carries both.
4. Anything else: 404 with an OpenAI-style JSON error.

Retries (virtual host) go to other hosts and other priorities; the route timeout is 0 so
token streams are bounded only by the idle timeout. Pure: imports protobuf messages only.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2

from controlplane.ir import ModelRouteIR, RetryIR, RouteConfigIR

BODY_METADATA_NAMESPACE = "envoy.filters.http.json_to_metadata"
"""Where the listener's json_to_metadata filter puts the body field ``model``."""
BODY_METADATA_KEY = "model"

NOT_FOUND_BODY = json.dumps(
    {
        "error": {
            "message": 'model not found: specify a known model in the JSON body field "model"'
            " or the x-model header",
            "type": "NotFoundError",
            "code": 404,
        }
    },
    separators=(",", ":"),
)

RETRY_ON = "connect-failure,refused-stream,reset,retriable-status-codes"
"""``retry_on`` has no token ``503``: status codes go through retriable-status-codes."""


def _exact_header(name: str, value: str) -> Any:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _body_model(model: str) -> Any:
    return metadata_pb2.MetadataMatcher(
        filter=BODY_METADATA_NAMESPACE,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=BODY_METADATA_KEY)],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=model)),
    )


def _json_reply(status: int, body: str) -> Any:
    """A direct response whose content-type is application/json (default is text/plain)."""
    return rc.DirectResponseAction(
        status=status,
        body=_data(body),
        body_format=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=_data("%LOCAL_REPLY_BODY%"),
            content_type="application/json",
        ),
    )


def _data(s: str) -> Any:
    return base_pb2.DataSource(inline_string=s)


def models_list_body(models: list[str]) -> str:
    """The OpenAI ``GET /v1/models`` answer for these model names."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "aixds"} for m in models]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":"))


def _retry_policy(r: RetryIR) -> Any:
    p = rc.RetryPolicy(
        retry_on=RETRY_ON,
        retriable_status_codes=list(r.retriable_status_codes),
        host_selection_retry_max_attempts=r.host_selection_retry_max_attempts,
    )
    p.num_retries.value = r.num_retries
    hosts = p.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts")
    hosts.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    p.retry_priority.name = "envoy.retry_priorities.previous_priorities"
    p.retry_priority.typed_config.Pack(
        previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2)
    )
    if r.per_try_idle_timeout_ms > 0:
        p.per_try_idle_timeout.FromMilliseconds(r.per_try_idle_timeout_ms)
    return p


def _action(rcfg: RouteConfigIR) -> Any:
    """A RouteAction with the streaming-safe timeouts; the caller sets the target."""
    a = rc.RouteAction()
    a.timeout.FromMilliseconds(0)  # the whole stream: unbounded; idle_timeout guards it
    a.idle_timeout.FromMilliseconds(rcfg.idle_timeout_ms)
    return a


def _weighted(rcfg: RouteConfigIR, m: ModelRouteIR) -> Any:
    a = _action(rcfg)
    wc = a.weighted_clusters
    for w in m.clusters:
        cw = wc.clusters.add(name=w.cluster)
        cw.weight.value = w.weight
    if m.session_header:
        wc.use_hash_policy.value = True  # the session keeps its version, not only its host
        a.hash_policy.append(_session_hash(m.session_header))
    return a


def _session_hash(header: str) -> Any:
    return rc.RouteAction.HashPolicy(header=rc.RouteAction.HashPolicy.Header(header_name=header))


def _model_routes(rcfg: RouteConfigIR, m: ModelRouteIR, by: Literal["header", "body"]) -> list[Any]:
    """Version routes then the weighted route for ``m``, matched ``by`` header or body."""

    def match(*headers: Any) -> Any:
        mt = rc.RouteMatch(prefix="/", headers=list(headers))
        if by == "header":
            mt.headers.insert(0, _exact_header(rcfg.model_header, m.model))
        else:
            mt.dynamic_metadata.append(_body_model(m.model))
        return mt

    routes = []
    for version, cluster in sorted(m.versions):
        a = _action(rcfg)
        a.cluster = cluster
        if m.session_header:
            a.hash_policy.append(_session_hash(m.session_header))
        routes.append(
            rc.Route(
                name=f"{m.model}/{by}/version/{version}",
                match=match(_exact_header(m.version_header, version)),
                route=a,
            )
        )
    routes.append(rc.Route(name=f"{m.model}/{by}", match=match(), route=_weighted(rcfg, m)))
    return routes


def build_route_configuration(rcfg: RouteConfigIR) -> Any:
    """The ``envoy.config.route.v3.RouteConfiguration`` named ``rcfg.name``."""
    models = sorted(rcfg.models, key=lambda m: m.model)
    vh = rc.VirtualHost(name="models", domains=["*"], include_attempt_count_in_response=True)
    vh.retry_policy.CopyFrom(_retry_policy(rcfg.retry))

    models_list = rc.Route(
        name="models-list",
        match=rc.RouteMatch(path="/v1/models", headers=[_exact_header(":method", "GET")]),
        direct_response=_json_reply(200, models_list_body([m.model for m in models])),
    )
    vh.routes.append(models_list)
    for m in models:
        vh.routes.extend(_model_routes(rcfg, m, "header"))
    for m in models:
        vh.routes.extend(_model_routes(rcfg, m, "body"))
    vh.routes.append(
        rc.Route(
            name="model-not-found",
            match=rc.RouteMatch(prefix="/"),
            direct_response=_json_reply(404, NOT_FOUND_BODY),
        )
    )
    return route_pb2.RouteConfiguration(name=rcfg.name, virtual_hosts=[vh])
