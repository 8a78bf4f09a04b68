"""One place that maps a server kind to its adapter (and says which kinds exist)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from controlplane.agent.servers.adapter import ModelServerAdapter
from controlplane.agent.servers.ollama import OllamaAdapter
from controlplane.agent.servers.sglang import SglangAdapter
from controlplane.agent.servers.speed import REFERENCE_TPS
from controlplane.agent.servers.tgi import TgiAdapter
from controlplane.agent.servers.triton import TritonAdapter
from controlplane.agent.servers.trtllm import TrtllmAdapter
from controlplane.agent.servers.vllm import VllmAdapter
from controlplane.fleet.model import ServerKind

IMPLEMENTED_KINDS = frozenset(ServerKind)


def make_adapter(
    kind: ServerKind,
    url: str,
    client: httpx.AsyncClient,
    versions: Mapping[str, str],
    metrics_url: str = "",
    reference_tps: float = REFERENCE_TPS,
) -> ModelServerAdapter:
    """The adapter for one server; ``metrics_url`` matters only for Triton, ``reference_tps``
    (the decode rate that counts as speed 1.0) for those that measure speed: vLLM, SGLang,
    TGI, TensorRT-LLM."""
    if kind is ServerKind.VLLM:
        return VllmAdapter(url, client, versions, reference_tps=reference_tps)
    if kind is ServerKind.SGLANG:
        return SglangAdapter(url, client, versions, reference_tps=reference_tps)
    if kind is ServerKind.TGI:
        return TgiAdapter(url, client, versions, reference_tps=reference_tps)
    if kind is ServerKind.TRITON:
        return TritonAdapter(url, client, versions, metrics_url)
    if kind is ServerKind.TRTLLM:
        return TrtllmAdapter(url, client, versions, reference_tps=reference_tps)
    if kind is ServerKind.OLLAMA:
        return OllamaAdapter(url, client, versions)
    raise ValueError(f"no adapter for server kind {kind!r}")
