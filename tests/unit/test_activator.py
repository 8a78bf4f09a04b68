"""The activator's pure parts: where a held request goes back to, the fallback rewrite,
and readiness from the fleet view."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from controlplane.activator.app import return_address, with_model
from controlplane.activator.readiness import Readiness, serving
from controlplane.fleet.model import ModelState
from controlplane.intent import Intent
from tests.fleetgen import fleet, replica


def request(ret: str, peer: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"x-aixds-return", ret.encode())],
        "client": (peer, 5555),
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("ret", "peer", "back"),
    [
        ("127.0.0.1:10000", "127.0.0.1", "127.0.0.1:10000"),
        ("10.0.0.5:10000", "10.0.0.5", "10.0.0.5:10000"),
        ("127.0.0.1:10000", "127.0.0.2", "127.0.0.1:10000"),  # both loopback
        ("10.9.9.9:10000", "10.0.0.5", "10.0.0.5:10000"),  # never a third host
        ("[::1]:10000", "::1", "[::1]:10000"),
        ("10.0.0.5", "10.0.0.5", None),
        ("10.0.0.5:0", "10.0.0.5", None),
        ("evil.example:80", "10.0.0.5", None),
    ],
)
def test_a_held_request_goes_back_only_to_the_caller(ret: str, peer: str, back: str | None) -> None:
    assert return_address(request(ret, peer)) == back


def test_the_fallback_rewrites_only_the_model_of_a_json_object() -> None:
    body = json.dumps({"model": "big", "messages": [], "user": "u"}).encode()
    assert json.loads(with_model(body, "small") or b"") == {
        "model": "small",
        "messages": [],
        "user": "u",
    }
    assert with_model(b"[1, 2]", "small") is None
    assert with_model(b"not json", "small") is None


def test_serving_needs_a_fresh_ready_or_warming_undrained_replica() -> None:
    it = Intent()

    def with_state(state: ModelState, model: str = "m") -> bool:
        return serving(fleet(replica("n/0", models=(("m", "v1", state),))), it, model, 1)

    assert not with_state(ModelState.LOADING)
    assert not with_state(ModelState.SLEEPING)
    assert with_state(ModelState.WARMING)
    assert with_state(ModelState.READY) and not with_state(ModelState.READY, "x")
    assert not serving(fleet(replica("n/0", draining=True)), it, "llama", 1)
    assert not serving(fleet(replica("n/0", expires_at=0.5)), it, "llama", 1)


def test_waiters_wake_on_a_fleet_change_and_give_up_at_the_deadline() -> None:
    view = fleet(replica("n/0", models=(("m", "v1", ModelState.LOADING),)))
    now = [1.0]
    ready = Readiness(lambda: view, Intent, lambda: now[0])

    async def main() -> tuple[bool, bool]:
        waiter = asyncio.create_task(ready.wait("m", deadline=100.0, poll_s=30))
        await asyncio.sleep(0.01)
        view.update(fleet(replica("n/0", models=(("m", "v1", ModelState.READY),))))
        ready.changed()
        got = await asyncio.wait_for(waiter, 1.0)
        late = await ready.wait("other", deadline=0.5)
        return got, late

    assert asyncio.run(main()) == (True, False)
