"""``aixds serve``'s placement flags reach the placement and forecast configs."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.cli import build_parser, placement_settings


def settings(*flags: str) -> Any:
    argv = ["serve", "--redis", "redis://127.0.0.1:6379/0", *flags]
    return placement_settings(build_parser(argv).parse_args(argv))


def test_defaults_and_each_flag() -> None:
    s = settings()
    assert s.enabled and s.placement.host_sleep_ratio == 2.0
    s = settings(
        "--host-sleep-ratio", "3.2", "--scale-down-after", "30", "--unload-after", "90",
        "--placement-hold", "5", "--replica-rps", "4", "--keep-alive", "20", "--no-placement",
    )  # fmt: skip
    p = s.placement
    assert (p.host_sleep_ratio, p.scale_down_after_s, p.unload_after_s) == (3.2, 30.0, 90.0)
    assert (p.hold_s, p.replica_rps) == (5.0, 4.0)
    assert s.forecast.fixed_keep_alive_s == 20.0 and not s.enabled


def test_a_ratio_that_is_not_positive_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings("--host-sleep-ratio", "0")
    assert "--host-sleep-ratio" in capsys.readouterr().err
