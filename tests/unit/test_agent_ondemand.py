"""The agent's cold-start calls against HTTP stubs: vLLM and SGLang sleep/wake, a vLLM
load by name for an available model, and ``OnDemand``'s available list and sleep state."""

from __future__ import annotations

import httpx
import pytest

from controlplane.agent.placement.desired import Desired
from controlplane.agent.placement.loaders import LoadError, SglangLoader, VllmLoraLoader
from controlplane.agent.servers.adapter import Probe
from controlplane.agent.servers.ondemand import (
    OnDemand,
    merged,
    parse_configured,
    parse_ollama_tags,
    parse_sim_available,
    parse_triton_index,
)
from controlplane.fleet.model import AvailableModel, ModelInfo, ModelState, ServerKind
from tests.unit.fake_lora import FakeLoraServer
from tests.unit.httpstub import StubRequest, StubResponse, StubServer

GiB = 1 << 30


class Sleepy:
    """A server that sleeps: vLLM's routes, SGLang's, or none (404)."""

    def __init__(self, routes: dict[str, str]) -> None:
        self.asleep = False
        self.calls: list[tuple[str, str, object]] = []
        self.routes = routes  # path -> "sleep" | "wake"

    def __call__(self, req: StubRequest) -> StubResponse:
        self.calls.append((req.method, req.path, req.query))
        what = self.routes.get(req.path)
        if what is None:
            return StubResponse(404, {"detail": "Not Found"})
        self.asleep = what == "sleep"
        return StubResponse(200, "")


async def test_vllm_sleeps_at_level_1_and_wakes() -> None:
    srv = Sleepy({"/sleep": "sleep", "/wake_up": "wake"})
    with StubServer(srv) as stub:
        async with httpx.AsyncClient() as client:
            loader = VllmLoraLoader(stub.url, client, 5.0)
            await loader.sleep()
            assert srv.asleep and srv.calls[-1] == ("POST", "/sleep", {"level": ["1"]})
            await loader.wake()
            assert not srv.asleep and srv.calls[-1][1] == "/wake_up"


async def test_vllm_without_the_sleep_api_fails_permanently_with_a_hint() -> None:
    with StubServer(Sleepy({})) as stub:
        async with httpx.AsyncClient() as client:
            with pytest.raises(LoadError, match="VLLM_SERVER_DEV_MODE=1") as e:
                await VllmLoraLoader(stub.url, client, 5.0).sleep()
            assert e.value.permanent


async def test_sglang_releases_and_resumes_memory_and_cannot_load() -> None:
    srv = Sleepy({"/release_memory_occupation": "sleep", "/resume_memory_occupation": "wake"})
    with StubServer(srv) as stub:
        async with httpx.AsyncClient() as client:
            loader = SglangLoader(stub.url, client, 5.0)
            await loader.sleep()
            assert srv.asleep
            await loader.wake()
            assert not srv.asleep
            with pytest.raises(LoadError) as e:
                await loader.load(Desired("m"))
            assert e.value.permanent


async def test_vllm_loads_an_available_model_by_name_and_refuses_others_without_path() -> None:
    srv = FakeLoraServer()
    with srv:
        async with httpx.AsyncClient() as client:
            loader = VllmLoraLoader(srv.url, client, 5.0, lambda: {"qwen"})
            await loader.load(Desired("qwen"))
            assert srv.loras == {"qwen": "qwen"}
            with pytest.raises(LoadError, match="needs 'path'") as e:
                await loader.load(Desired("other"))
            assert e.value.permanent


def test_parse_configured() -> None:
    assert parse_configured("vllm-8000=a:8:40,b,c::3") == (
        "vllm-8000",
        (
            AvailableModel("a", mem_bytes=8 * GiB, load_s=40.0),
            AvailableModel("b"),
            AvailableModel("c", load_s=3.0),
        ),
    )
    for bad in ("a:8", "=a", "s=a:x", "s=a:1:2:3", "s=a:-1"):
        with pytest.raises(ValueError):
            parse_configured(bad)


def test_the_parsers_of_each_kind_and_the_merge() -> None:
    sim = {"models": [{"name": "q", "mem_bytes": 5, "load_s": 2.5, "wake_s": 0.5}, {"x": 1}]}
    assert parse_sim_available(sim) == (AvailableModel("q", mem_bytes=5, load_s=2.5, wake_s=0.5),)
    assert parse_sim_available({"detail": "Not Found"}) is None
    tags = {"models": [{"name": "llama3:8b", "size": 4_661_224_676}, "junk"]}
    assert parse_ollama_tags(tags) == (AvailableModel("llama3:8b", mem_bytes=4_661_224_676),)
    index = [{"name": "resnet", "version": "1", "state": "READY"}, {"name": "bert"}]
    assert parse_triton_index(index) == (AvailableModel("resnet"), AvailableModel("bert"))
    conf = (AvailableModel("bert", mem_bytes=7, load_s=4.0), AvailableModel("gone"))
    assert merged(parse_triton_index(index), conf) == (
        AvailableModel("resnet"),
        AvailableModel("bert", mem_bytes=7, load_s=4.0),
    )
    assert merged(None, conf) == conf


class Inner:
    """A kind's adapter that always sees one ready model."""

    def __init__(self, kind: ServerKind) -> None:
        self._kind = kind

    @property
    def kind(self) -> ServerKind:
        return self._kind

    async def probe(self) -> Probe:
        return Probe(True, (ModelInfo("base", "v1", ModelState.READY),))


async def test_on_demand_reads_the_fake_list_and_sleep_state_of_vllm() -> None:
    state = {"asleep": False, "sim": True}

    def handle(req: StubRequest) -> StubResponse:
        if req.path == "/is_sleeping":
            return StubResponse(200, {"is_sleeping": state["asleep"]})
        if req.path == "/sim/available" and state["sim"]:
            return StubResponse(200, {"models": [{"name": "q", "load_s": 2.0}]})
        return StubResponse(404, {"detail": "Not Found"})

    now = [0.0]
    conf = (AvailableModel("from-config", load_s=9.0),)
    with StubServer(handle) as stub:
        async with httpx.AsyncClient() as client:
            od = OnDemand(Inner(ServerKind.VLLM), stub.url, client, conf, clock=lambda: now[0])
            p = await od.probe()
            assert p.available == (AvailableModel("q", load_s=2.0),) and p.sleeping is False
            state["asleep"], state["sim"] = True, False
            p = await od.probe()
            assert p.sleeping is True
            assert p.models == (ModelInfo("base", "v1", ModelState.SLEEPING),)
            assert p.available == (AvailableModel("q", load_s=2.0),)  # not read again yet
            now[0] = 10.0
            assert (await od.probe()).available == conf  # a real vLLM: the configured list


async def test_on_demand_for_kinds_without_a_list_or_a_sleep_query() -> None:
    with StubServer(lambda req: StubResponse(500, "")) as stub:
        async with httpx.AsyncClient() as client:
            conf = (AvailableModel("x"),)
            p = await OnDemand(Inner(ServerKind.TGI), stub.url, client, conf).probe()
            assert p.available == () and p.sleeping is None
            assert stub.requests == []  # asks nothing
