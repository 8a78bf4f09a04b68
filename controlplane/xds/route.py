"""RDS builder: one ``RouteConfigIR`` -> an Envoy ``RouteConfiguration``.

One virtual host ``*``. Routes, first match wins:

1. ``GET /v1/models``: an OpenAI model list of the models below (direct response).
2. Per model, on the ``x-model`` header: one route per version for ``x-model-version``;
   with session affinity, a route for requests carrying the session header and one for
   those whose body has a non-empty ``user`` (both to the versions' affinity clusters,
   hashed on the key); then the weighted route across versions (load-following).
3. The same per model on the body field ``model`` (dynamic metadata written by
   ``envoy.filters.http.json_to_metadata``). Header routes come first for every model, so
   the header wins consistently when a request carries both.
4. A POST without the model header whose body cannot name a model: 400 with an OpenAI
   ``invalid_request_error`` saying why (a content-type other than JSON, a body that is not
   valid JSON, JSON without ``model``). The listener's filter records the last two in
   ``request_error``. A request that names a model by header never gets these.
5. Anything else: 404 with an OpenAI-style JSON error (an unknown model).

A cold model (``ModelRouteIR.activator``) has one route per match kind, to the activator
cluster, with the model and the listener's address added as headers.

Response headers: ``x-aixds-version`` (the version that answered: per weighted cluster
and on the version routes) and, on every route of a model whose live regions serve
different versions, ``x-aixds-regions-differ`` (each region's versions); neither with
``RouteConfigIR.version_headers`` False.

Retries (virtual host) go to other hosts and other priorities; the route timeout is 0 so
token streams are bounded only by the idle timeout. Pure: imports protobuf messages only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

from controlplane.ir import (
    ACTIVATOR_MODEL_HEADER,
    ACTIVATOR_RETURN_HEADER,
    ModelRouteIR,
    RetryIR,
    RouteConfigIR,
    WeightedClusterIR,
)

BODY_METADATA_NAMESPACE = "envoy.filters.http.json_to_metadata"
"""Where the listener's json_to_metadata filter puts the body field ``model``."""
BODY_METADATA_KEY = "model"
USER_METADATA_KEY = "user"
"""The OpenAI body field ``user``, copied by the same filter when present: a session key."""
SESSION_FILTER_STATE_KEY = "aixds.session.user"
"""Filter state object (an ``envoy.hashable_string``) holding the body's ``user``; the
listener's ``set_filter_state`` filter sets it, the routes' hash policy reads it."""
VERSION_HEADER = "x-aixds-version"
"""Response header: the model version that answered (set per weighted cluster, and on the
routes a request picks a version with)."""
REGIONS_DIFFER_HEADER = "x-aixds-regions-differ"
"""Response header on every route of a model whose versions differ between live regions:
each region's versions (``ModelRouteIR.regions_differ``)."""
REQUEST_ERROR_KEY = "request_error"
"""Set in the same namespace by the filter when the body has no ``model`` to copy."""
NOT_JSON = "not_json"
"""``request_error`` for a JSON content-type whose body does not parse (or is too large)."""
NO_MODEL = "no_model"
"""``request_error`` for an empty body or JSON without ``model``."""
JSON_CONTENT_TYPES = "^application/json(;.*)?$"
"""The content-types whose body the filter reads (its default is exactly
``application/json``, without a charset)."""

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


def bad_request_body(message: str, code: str, param: str | None = None) -> str:
    """OpenAI's error object for a request it cannot serve as sent (status 400)."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return json.dumps({"error": error}, separators=(",", ":"))


RETRY_ON = "connect-failure,refused-stream,reset,retriable-status-codes"
"""``retry_on`` has no token ``503``: status codes go through retriable-status-codes."""


def _exact_header(name: str, value: str) -> Any:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _body_metadata(key: str, value: str) -> Any:
    return metadata_pb2.MetadataMatcher(
        filter=BODY_METADATA_NAMESPACE,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
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


def _split(rcfg: RouteConfigIR, clusters: Sequence[WeightedClusterIR], session_header: str) -> Any:
    """A RouteAction over weighted ``clusters``; with ``session_header``, hashed on the
    session key, which then picks the version (``use_hash_policy``) and, in a hash
    cluster, the replica."""
    a = _action(rcfg)
    wc = a.weighted_clusters
    for w in clusters:
        cw = wc.clusters.add(name=w.cluster)
        cw.weight.value = w.weight
        if w.version and rcfg.version_headers:
            cw.response_headers_to_add.append(_overwrite(VERSION_HEADER, w.version))
    if session_header:
        wc.use_hash_policy.value = True
        a.hash_policy.extend(_session_hash(session_header))
    return a


def _non_empty_body_field(key: str) -> Any:
    return metadata_pb2.MetadataMatcher(
        filter=BODY_METADATA_NAMESPACE,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value_pb2.ValueMatcher(
            string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
        ),
    )


def _session_hash(header: str) -> list[Any]:
    """The session key: the header if sent (terminal: nothing else is mixed in), else the
    body's ``user`` (filter state, set only when non-empty). With neither, no hash: the
    request still goes through (MAGLEV/RING_HASH then pick a random host)."""
    hp = rc.RouteAction.HashPolicy
    return [
        hp(header=hp.Header(header_name=header), terminal=True),
        hp(filter_state=hp.FilterState(key=SESSION_FILTER_STATE_KEY)),
    ]


def _model_routes(rcfg: RouteConfigIR, m: ModelRouteIR, by: Literal["header", "body"]) -> list[Any]:
    """Version routes then the weighted route for ``m``, matched ``by`` header or body."""

    def match(*headers: Any) -> Any:
        mt = rc.RouteMatch(prefix="/", headers=list(headers))
        if by == "header":
            mt.headers.insert(0, _exact_header(rcfg.model_header, m.model))
        else:
            mt.dynamic_metadata.append(_body_metadata(BODY_METADATA_KEY, m.model))
        return mt

    if m.activator:
        cold = rc.Route(name=f"{m.model}/{by}/cold", match=match(), route=_to_activator(rcfg, m))
        cold.request_headers_to_add.extend(_activator_headers(m))
        return [cold]
    routes = []
    for version, cluster in sorted(m.versions):
        a = _action(rcfg)
        a.cluster = cluster
        if m.session_header:
            a.hash_policy.extend(_session_hash(m.session_header))
        pinned = rc.Route(
            name=f"{m.model}/{by}/version/{version}",
            match=match(_exact_header(m.version_header, version)),
            route=a,
        )
        if rcfg.version_headers:
            pinned.response_headers_to_add.append(_overwrite(VERSION_HEADER, version))
        routes.append(pinned)
    if m.affinity_clusters:
        affinity = _split(rcfg, m.affinity_clusters, m.session_key_header)
        by_header = match(rc.HeaderMatcher(name=m.session_key_header, present_match=True))
        routes.append(rc.Route(name=f"{m.model}/{by}/session", match=by_header, route=affinity))
        by_user = match()
        by_user.dynamic_metadata.append(_non_empty_body_field(USER_METADATA_KEY))
        routes.append(rc.Route(name=f"{m.model}/{by}/user", match=by_user, route=affinity))
    routes.append(
        rc.Route(
            name=f"{m.model}/{by}", match=match(), route=_split(rcfg, m.clusters, m.session_header)
        )
    )
    if m.regions_differ and rcfg.version_headers:
        for r in routes:
            r.response_headers_to_add.append(_overwrite(REGIONS_DIFFER_HEADER, m.regions_differ))
    return routes


ACTIVATOR_RETRY_ON = "connect-failure,refused-stream"
"""A cold model's route retries only an activator that cannot be reached: one that held
the request and answers 503 has waited its whole bound already."""


def _to_activator(rcfg: RouteConfigIR, m: ModelRouteIR) -> Any:
    """The route action of a cold model: to the activator cluster, telling it the model and
    the listener address to send the request back to (client values overwritten)."""
    a = _action(rcfg)
    a.cluster = m.clusters[0].cluster
    retry = rc.RetryPolicy(retry_on=ACTIVATOR_RETRY_ON)
    retry.num_retries.value = 2
    a.retry_policy.CopyFrom(retry)
    return a


def _overwrite(key: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _activator_headers(m: ModelRouteIR) -> list[Any]:
    return [
        _overwrite(ACTIVATOR_RETURN_HEADER, "%DOWNSTREAM_LOCAL_ADDRESS%"),
        _overwrite(ACTIVATOR_MODEL_HEADER, m.model),
    ]


def _bad_request_routes(model_header: str) -> list[Any]:
    """400s for a POST that names no model by header and whose body names none either."""
    or_header = f"or name the model in the {model_header} header"
    not_json = bad_request_body(
        f'the request body is not valid JSON: send a JSON object with a "model" field, {or_header}',
        "invalid_json",
    )
    wrong_type = bad_request_body(
        "the request body is not JSON: send it with content-type: application/json and a"
        f' "model" field, {or_header}',
        "unsupported_content_type",
    )
    no_model = bad_request_body(
        'you must provide a model parameter: the JSON body field "model"'
        f" or the {model_header} header",
        "missing_model",
        param="model",
    )
    not_json_type = rc.HeaderMatcher(
        name="content-type",
        string_match=string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=JSON_CONTENT_TYPES)
        ),
        invert_match=True,
        treat_missing_header_as_empty=True,  # no content-type at all: not JSON either
    )

    def match(*, headers: tuple[Any, ...] = (), error: str = "") -> Any:
        mt = rc.RouteMatch(
            prefix="/",
            headers=[
                _exact_header(":method", "POST"),
                rc.HeaderMatcher(name=model_header, present_match=True, invert_match=True),
                *headers,
            ],
        )
        if error:
            mt.dynamic_metadata.append(_body_metadata(REQUEST_ERROR_KEY, error))
        return mt

    return [
        rc.Route(
            name="bad-request/content-type",
            match=match(headers=(not_json_type,)),
            direct_response=_json_reply(400, wrong_type),
        ),
        rc.Route(
            name="bad-request/not-json",
            match=match(error=NOT_JSON),
            direct_response=_json_reply(400, not_json),
        ),
        rc.Route(
            name="bad-request/no-model",
            match=match(error=NO_MODEL),
            direct_response=_json_reply(400, no_model),
        ),
    ]


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
    vh.routes.extend(_bad_request_routes(rcfg.model_header))
    vh.routes.append(
        rc.Route(
            name="model-not-found",
            match=rc.RouteMatch(prefix="/"),
            direct_response=_json_reply(404, NOT_FOUND_BODY),
        )
    )
    return route_pb2.RouteConfiguration(name=rcfg.name, virtual_hosts=[vh])
