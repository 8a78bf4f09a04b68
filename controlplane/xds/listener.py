"""LDS builder: one ``ListenerIR`` -> an Envoy ``Listener``.

An HTTP connection manager whose routes come over RDS on the same ADS stream, with three
HTTP filters: ``json_to_metadata`` copies the OpenAI body fields ``model`` and ``user`` into
dynamic metadata, or notes why it could not (and clears the route cache, so routes can
match either); ``set_filter_state`` turns a non-empty ``user`` into a hashable filter state
object that the routes' session hash policy reads; then the router. The connection buffer
limit is raised so large prompts are not answered 413.
Pure: imports protobuf messages only.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    substitution_format_string_pb2,
)
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2 as sfs_value
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2 as j2m
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2 as sfs
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2

from controlplane.ir import ListenerIR
from controlplane.xds.route import (
    BODY_METADATA_KEY,
    BODY_METADATA_NAMESPACE,
    JSON_CONTENT_TYPES,
    NO_MODEL,
    NOT_JSON,
    REQUEST_ERROR_KEY,
    SESSION_FILTER_STATE_KEY,
    USER_METADATA_KEY,
)

STREAM_IDLE_TIMEOUT_S = 600
"""Fallback for routes without their own idle_timeout (every model route sets one)."""
DELAYED_CLOSE_MS = 100
"""How long Envoy waits for a client's FIN after closing its connection. Envoy's default,
1 s, is what a client whose stream was cut (its server died mid-answer, HTTP/1.1) waited
to see the connection end: measured 1.1 s from the kill to the resuming client's notice,
against ~0.1 s with 100 ms. Local replies come after the whole body is read (the
json_to_metadata filter buffers it), so the grace that protects a client still sending
is not needed for them."""


def _request_error(value: str) -> Any:
    kv = j2m.JsonToMetadata.KeyValuePair(
        metadata_namespace=BODY_METADATA_NAMESPACE, key=REQUEST_ERROR_KEY
    )
    kv.value.string_value = value
    return kv


def _json_to_metadata() -> Any:
    """``model`` from a JSON body; else ``request_error``, which the routes answer with a 400:
    ``no_model`` (empty body, no such field) or ``not_json`` (unparseable, too large). A
    body of another content-type is not read at all and sets neither."""
    rule = j2m.JsonToMetadata.Rule(
        selectors=[j2m.JsonToMetadata.Selector(key=BODY_METADATA_KEY)],
        on_present=j2m.JsonToMetadata.KeyValuePair(
            metadata_namespace=BODY_METADATA_NAMESPACE, key=BODY_METADATA_KEY
        ),
        on_missing=_request_error(NO_MODEL),
        on_error=_request_error(NOT_JSON),
    )
    user = j2m.JsonToMetadata.Rule(
        selectors=[j2m.JsonToMetadata.Selector(key=USER_METADATA_KEY)],
        on_present=j2m.JsonToMetadata.KeyValuePair(
            metadata_namespace=BODY_METADATA_NAMESPACE, key=USER_METADATA_KEY
        ),
    )
    rules = j2m.JsonToMetadata.MatchRules(
        rules=[rule, user],
        allow_content_types_regex=regex_pb2.RegexMatcher(regex=JSON_CONTENT_TYPES),
    )
    return j2m.JsonToMetadata(request_rules=rules)


def _session_filter_state() -> Any:
    """The body's ``user`` as an ``envoy.hashable_string`` (``envoy.string`` has no hash,
    so a hash policy on it yields nothing). Absent or empty: nothing is set, so requests
    without a ``user`` are not hashed together into one giant session."""
    fmt = f"%DYNAMIC_METADATA({BODY_METADATA_NAMESPACE}:{USER_METADATA_KEY})%"
    value = sfs_value.FilterStateValue(
        object_key=SESSION_FILTER_STATE_KEY,
        factory_key="envoy.hashable_string",
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=fmt),
            omit_empty_values=True,  # absent renders "", not "-"
        ),
        skip_if_empty=True,
    )
    return sfs.Config(on_request_headers=[value])


def _hcm(lis: ListenerIR) -> Any:
    h = hcm_pb2.HttpConnectionManager(
        stat_prefix=lis.name, codec_type=hcm_pb2.HttpConnectionManager.AUTO
    )
    j2m_filter = h.http_filters.add(name="envoy.filters.http.json_to_metadata")
    j2m_filter.typed_config.Pack(_json_to_metadata())
    # After json_to_metadata: it holds the headers until the body is read, so this filter's
    # on_request_headers runs with the body's metadata already there.
    session = h.http_filters.add(name="envoy.filters.http.set_filter_state")
    session.typed_config.Pack(_session_filter_state())
    router = h.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    h.rds.route_config_name = lis.route_config
    h.rds.config_source.CopyFrom(
        config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        )
    )
    h.stream_idle_timeout.FromSeconds(STREAM_IDLE_TIMEOUT_S)
    h.delayed_close_timeout.FromMilliseconds(DELAYED_CLOSE_MS)
    return h


def build_listener(lis: ListenerIR) -> Any:
    """The ``envoy.config.listener.v3.Listener`` named ``lis.name``."""
    out = listener_pb2.Listener(
        name=lis.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=lis.address, port_value=lis.port)
        ),
    )
    hcm = out.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    hcm.typed_config.Pack(_hcm(lis))
    # json_to_metadata buffers the whole body; Envoy's 1 MiB default answers 413 above it.
    out.per_connection_buffer_limit_bytes.value = lis.max_request_bytes
    return out
