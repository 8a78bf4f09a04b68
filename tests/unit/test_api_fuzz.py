"""Schemathesis against ``/openapi.json`` of the in-process API: no input yields a 5xx,
and every status code, content type and body is the one the schema documents.

Every operation gets generated valid (positive) and invalid (negative) inputs, with the
API token, on one app whose state carries over between calls; some cases are steered to
existing model and version names so rollouts really start, switch, promote and roll
back. Bounded: 30 examples per operation and mode (10 per round). Needs ``schemathesis``
(a dev dependency). Driven through hypothesis directly: the schemathesis pytest plugin
does not support pytest 9 yet.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.rollout_app import MemoryRedis, build  # noqa: E402

AUTH = {"authorization": "Bearer tok"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
"""No 5xx, and every answer (errors too) is documented in /openapi.json as it is sent."""
EXAMPLES = 10
ROUNDS = 3
"""Every operation in turn, ROUNDS times: a canary started in one round can be set,
promoted or rolled back in the next."""
NAMES = [None, ("llama", "v2"), ("llama", "v1"), ("llama", "v3"), ("qwen", "q1")]
TARGETS = {("llama", "v2"): "n1", ("llama", "v1"): "n2/a", ("qwen", "q1"): "n5"}
"""Drain targets and nodes that exist in the test fleet, picked with the same draw as NAMES."""


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def steer(case: Any, names: tuple[str, str] | None, canary: bool, keep_revision: bool) -> Any:
    """Point some cases at names that exist, so success paths are fuzzed too."""
    if names is not None and "model" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "model": names[0]}
    if names in TARGETS and "target" in (case.path_parameters or {}):
        case.path_parameters = {**case.path_parameters, "target": TARGETS[names]}
    if names in TARGETS and "node" in (case.path_parameters or {}):
        node = TARGETS[names].split("/")[0]
        case.path_parameters = {**case.path_parameters, "node": node}
    if isinstance(case.body, dict):
        body = dict(case.body)
        if names is not None and "to" in body:
            body["to"] = names[1]
            if canary:
                body.setdefault("canary_percent", 10.0)
        if not keep_revision:
            body.pop("revision", None)
        case.body = body
    return case


def strategy(op: Any, mode: GenerationMode) -> Any:
    return st.builds(
        steer,
        op.as_strategy(generation_mode=mode),
        st.sampled_from(NAMES),
        st.booleans(),
        st.sampled_from([False, False, False, True]),
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_yields_a_server_error(mode: GenerationMode) -> None:
    app = build(redis=MemoryRedis()).app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    setup = TestClient(app)
    ops = operations(schema)
    labels = {op.label for op in ops}
    assert "POST /v1/rollouts/{model}" in labels and "GET /v1/models" in labels, labels
    calls: dict[str, dict[int, int]] = {}
    for op in ops * ROUNDS:
        if op.label.startswith("POST /v1/rollouts/{model}/"):
            # give the action something to act on: a canary in progress, if one can start
            for to in ("v2", "v1"):
                setup.post(
                    "/v1/rollouts/llama", json={"to": to, "canary_percent": 10}, headers=AUTH
                )

        @given(case=strategy(op, mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            resp = case.call_and_validate(headers=AUTH, checks=CHECKS)
            seen = calls.setdefault(case.operation.label, {})
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing invalid to send (no inputs)
    print({k: dict(sorted(v.items())) for k, v in sorted(calls.items())})
    # the fuzzing reached the operations and, for writes, got past authentication
    if mode is GenerationMode.POSITIVE:
        assert set(calls) == labels
        writes = [k for k in calls if k.split()[0] in ("POST", "PUT", "DELETE")]
        assert all(200 in calls[k] for k in writes), calls
