"""fleet.yaml's regions: a Redis per region (new form) or bare distance maps (old form)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.settings import ConfigError, FleetConfig, load_fleet_config

NEW = """
regions:
  us-east:
    redis: redis://10.0.0.1:6379/0
    distance: {eu-west: 80}
  eu-west:
    redis: rediss://10.1.0.1:6380/0
    distance: {us-east: 80}
"""


def load(tmp_path: Path, text: str) -> FleetConfig:
    p = tmp_path / "fleet.yaml"
    p.write_text(text)
    return load_fleet_config(p)


def test_per_region_form(tmp_path: Path) -> None:
    cfg = load(tmp_path, NEW)
    assert cfg.region_distance == {"us-east": {"eu-west": 80}, "eu-west": {"us-east": 80}}
    assert cfg.region_redis == {
        "us-east": "redis://10.0.0.1:6379/0",
        "eu-west": "rediss://10.1.0.1:6380/0",
    }
    assert cfg.base_intent().region_distance["eu-west"]["us-east"] == 80
    assert list(cfg.registries("eu-west", "")) == ["eu-west", "us-east"]
    assert cfg.registries("eu-west", "rediss://10.1.0.1:6380/0")["eu-west"].startswith("rediss")
    with pytest.raises(ConfigError, match="--region must be one of"):
        cfg.registries("", "")
    with pytest.raises(ConfigError, match="is not fleet\\.yaml's registry of us-east"):
        cfg.registries("us-east", "redis://127.0.0.1:6379/0")


def test_old_form_stays_one_redis(tmp_path: Path) -> None:
    cfg = load(tmp_path, "regions:\n  us: {eu: 80}\n  eu: {us: 80}\n")
    assert cfg.region_distance == {"us": {"eu": 80}, "eu": {"us": 80}}
    assert cfg.region_redis == {}
    assert cfg.registries("us", "") == {"us": "redis://127.0.0.1:6379/0"}
    assert cfg.registries("", "redis://h:1/0") == {"": "redis://h:1/0"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "regions:\n  us: {redis: 'redis://a:1/0', distance: {eu: 1}}\n  eu: {us: 1}\n",
            "mixes the per-region form",
        ),
        ("regions:\n  us: {redis: 'http://a:1/0'}\n", "rediss:// or unix://"),
        ("regions:\n  us: {distance: {eu: 1}}\n", "regions.us.redis must be"),
        ("regions:\n  us: {redis: 'redis://a/0', distance: {eu: -1}}\n", "distances >= 0"),
        ("regions:\n  us: {redis: 'redis://a/0', distance: {eu: 1.5}}\n", "distances >= 0"),
        ("regions:\n  us: {redis: 'redis://a/0', zone: x}\n", "unknown keys"),
        ("regions:\n  us: {eu: true}\n", "regions.us must map"),
        ("regions:\n  us: 3\n", "regions.us must be a mapping"),
        ("regions: [us]\n", "'regions' must map"),
    ],
)
def test_region_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)
