"""The Ollama adapter against recorded /api/ps answers (tests/fixtures/ollama/)."""

from __future__ import annotations

import pytest

from controlplane.agent.servers.adapter import UNREACHABLE
from controlplane.agent.servers.ollama import OllamaAdapter, parse_ps
from controlplane.fleet.model import LoadStats, ModelInfo, ModelState, ServerKind
from tests.unit.adapter_support import (
    fixture,
    fixture_json,
    mock_client,
    publishable,
    refusing_client,
)

K = "ollama"


def test_loaded_models() -> None:
    got = parse_ps(fixture_json(K, "ps.json"), {"qwen2.5-coder:7b": "v2"})
    assert got == (("llama3.2:3b", "default"), ("qwen2.5-coder:7b", "v2"))


def test_nothing_loaded() -> None:
    assert parse_ps(fixture_json(K, "ps_empty.json"), {}) == ()


def test_odd_entries_are_skipped() -> None:
    got = parse_ps(fixture_json(K, "ps_odd.json"), {})
    assert got == (("only-model-field:latest", "default"), ("llama3.2:3b", "default"))


@pytest.mark.parametrize("doc", [fixture_json(K, "tags.json") | {"models": "x"}, [], None])
def test_not_ps(doc: object) -> None:
    with pytest.raises(ValueError):
        parse_ps(doc, {})


async def test_probe() -> None:
    a = OllamaAdapter(
        "http://h:11434", mock_client({"GET /api/ps": (200, fixture(K, "ps.json"))}), {}
    )
    p = await a.probe()
    assert p.models == (
        ModelInfo("llama3.2:3b", "default", ModelState.READY),
        ModelInfo("qwen2.5-coder:7b", "default", ModelState.READY),
    )
    assert p.load == LoadStats()  # Ollama exposes no queue or KV numbers
    assert a.kind is ServerKind.OLLAMA
    publishable(p, ServerKind.OLLAMA)


async def test_probe_garbage_and_down() -> None:
    a = OllamaAdapter(
        "http://h:1", mock_client({"GET /api/ps": (200, fixture(K, "garbage.txt"))}), {}
    )
    p = await a.probe()
    assert p.reachable and p.models == ()
    assert await OllamaAdapter("http://h:1", refusing_client(), {}).probe() == UNREACHABLE
