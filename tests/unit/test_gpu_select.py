"""Which GPUs serve which model server: CUDA_VISIBLE_DEVICES-style selections."""

from __future__ import annotations

import pytest

from controlplane.agent.gpus.selection import GpuSelection, SelectedGpus, parse_server_gpus
from controlplane.agent.gpus.source import NoGpu
from controlplane.agent.gpus.wiring import make_gpu_source
from controlplane.fleet.model import GpuStats

U = [
    "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
    "GPU-8932f937-ffff-4106-c12f-20bd9faed9f6",
    "GPU-1c2d3e4f-0000-4106-c12f-20bd9faed9f6",
    "GPU-aa00bb11-0000-4106-c12f-20bd9faed9f6",
]
GPUS = tuple(GpuStats(index=i, uuid=u) for i, u in enumerate(U))


class Fixed:
    def __init__(self, gpus: tuple[GpuStats, ...]) -> None:
        self.gpus = gpus
        self.cleared: list[float] = []

    def read(self) -> tuple[GpuStats, ...]:
        return self.gpus

    def clear_faults(self, before: float) -> list[str]:
        self.cleared.append(before)
        return ["x"]


def indices(gpus: tuple[GpuStats, ...]) -> list[int]:
    return [g.index for g in gpus]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("all", [0, 1, 2, 3]),
        ("ALL", [0, 1, 2, 3]),
        ("none", []),
        ("", []),
        ("0", [0]),
        ("2,0", [2, 0]),  # CUDA order is the listed order
        (" 1 , 3 ", [1, 3]),
        (U[2], [2]),
        (U[2].upper().replace("GPU-", "gpu-"), [2]),
        ("GPU-1c2d3e4f", [2]),  # a unique prefix, as CUDA accepts
        (f"3,{U[0]}", [3, 0]),
    ],
)
def test_selection_picks(text: str, want: list[int]) -> None:
    picked, problems = GpuSelection.parse(text).select(GPUS)
    assert indices(picked) == want
    assert problems == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("7", "no GPU 7"),
        ("GPU-8932f937", "matches 2 GPUs"),  # ambiguous prefix: none rather than a guess
        ("GPU-deadbeef", "no GPU gpu-deadbeef"),
    ],
)
def test_selection_reports_what_did_not_match(text: str, problem: str) -> None:
    picked, problems = GpuSelection.parse(f"0,{text}").select(GPUS)
    assert indices(picked) == [0]
    assert len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0,,1", "empty entry"),
        ("0,0", "listed twice"),
        ("-1", "neither a GPU index nor"),
        ("gpu0", "neither a GPU index nor"),
        ("GPU-12", "not a GPU UUID"),
        ("GPU-zzzzzzzzzz", "not a GPU UUID"),
        ("MIG-5f4c6c6c-0000-0000-0000-000000000000", "MIG instances are not supported"),
        ("4096", "out of range"),
    ],
)
def test_selection_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        GpuSelection.parse(text)


def test_selection_str_round_trips() -> None:
    for text in ("all", "none", "2,0"):
        assert str(GpuSelection.parse(text)) == text


def test_selected_view_filters_and_passes_clears_on() -> None:
    inner = Fixed(GPUS)
    view = SelectedGpus(inner, GpuSelection.parse("1,3"))
    assert indices(view.read()) == [1, 3]
    assert view.clear_faults(5.0) == ["x"]
    assert inner.cleared == [5.0]
    assert SelectedGpus(NoGpu(), GpuSelection.parse("0")).clear_faults(1.0) == []


def test_parse_server_gpus() -> None:
    got = parse_server_gpus(["8001=0,1", "8002=GPU-1c2d3e4f", "8003=all"])
    assert {p: str(s) for p, s in got.items()} == {
        8001: "0,1",
        8002: "gpu-1c2d3e4f",
        8003: "all",
    }
    assert parse_server_gpus(None) == {}
    for bad, why in (("0,1", "PORT=GPUS"), ("x=1", "PORT=GPUS"), ("8001=q", "8001=q")):
        with pytest.raises(ValueError, match=why):
            parse_server_gpus([bad])
    with pytest.raises(ValueError, match="twice"):
        parse_server_gpus(["8001=0", "8001=1"])


def test_make_gpu_source() -> None:
    assert isinstance(make_gpu_source("none"), NoGpu)
    with pytest.raises(ValueError, match="needs the model server's URL"):
        make_gpu_source("sim")
    with pytest.raises(ValueError, match="unknown GPU source"):
        make_gpu_source("cuda")
