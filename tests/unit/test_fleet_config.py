"""fleet.yaml's regions: a Redis per region (new form) or bare distance maps (old form)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.intent import Intent, with_base
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


def test_sentinel_url_as_a_region_registry(tmp_path: Path) -> None:
    ha = "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379,10.0.0.7/us-east/0"
    cfg = load(tmp_path, NEW.replace("redis://10.0.0.1:6379/0", ha))
    assert cfg.registries("us-east", ha) == {"us-east": ha, "eu-west": "rediss://10.1.0.1:6380/0"}
    bad = NEW.replace("redis://10.0.0.1:6379/0", ha + "/x")
    with pytest.raises(ConfigError, match=r"regions.us-east.redis: .*/SERVICE or /SERVICE/DB"):
        load(tmp_path, bad)


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
        ("regions:\n  us: {redis: 'http://a:1/0'}\n", "regions.us.redis: unknown scheme 'http'"),
        ("regions:\n  us: {redis: 'redis+sentinel://a:1/'}\n", "regions.us.redis: .*no service"),
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


REPLICATED = """
intent: {home: us-east}
regions:
  us-east:
    redis: redis://10.0.0.1:6379/0
    intent_redis: redis://10.0.0.2:6379/0
    distance: {eu-west: 80}
  eu-west:
    redis: redis://10.1.0.1:6379/0
    intent_redis: redis://10.1.0.2:6379/0
    distance: {us-east: 80}
"""


def test_replicated_intent_topology(tmp_path: Path) -> None:
    cfg = load(tmp_path, REPLICATED)
    assert cfg.intent_home == "us-east"
    eu = cfg.intent_topology("eu-west")
    assert eu is not None and not eu.is_home
    assert (eu.home_url, eu.local_url) == ("redis://10.0.0.2:6379/0", "redis://10.1.0.2:6379/0")
    us = cfg.intent_topology("us-east")
    assert us is not None and us.is_home and us.home_url == us.local_url
    with pytest.raises(ConfigError, match="--region must be one of"):
        cfg.intent_topology("ap-south")
    # Registries are unchanged by the intent Redis.
    assert cfg.registries("eu-west", "")["eu-west"] == "redis://10.1.0.1:6379/0"


def test_without_intent_home_intent_stays_in_the_registry(tmp_path: Path) -> None:
    assert load(tmp_path, NEW).intent_topology("us-east") is None
    assert FleetConfig().intent_topology("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            REPLICATED.replace("intent: {home: us-east}", "intent: {home: ap-south}"),
            r"intent.home must be one of \['eu-west', 'us-east'\], got 'ap-south'",
        ),
        (REPLICATED.replace("intent: {home: us-east}", "intent: {}"), "exactly 'home: REGION'"),
        (
            REPLICATED.replace("intent: {home: us-east}", "intent: {home: us-east, x: 1}"),
            "exactly 'home: REGION'",
        ),
        (
            REPLICATED.replace("intent: {home: us-east}\n", ""),
            r"give an intent_redis but no 'intent: \{home: REGION\}'",
        ),
        (
            REPLICATED.replace("    intent_redis: redis://10.1.0.2:6379/0\n", ""),
            "every region needs 'intent_redis'.*missing in eu-west",
        ),
        (
            REPLICATED.replace("redis://10.1.0.2:6379/0", "redis://10.0.0.2:6379/0"),
            "have the same intent_redis",
        ),
        (
            REPLICATED.replace("redis://10.1.0.2:6379/0", "redis://10.1.0.1:6379/0"),
            "regions.eu-west.intent_redis is its registry",
        ),
        (
            REPLICATED.replace("redis://10.1.0.2:6379/0", "http://x"),
            "regions.eu-west.intent_redis: unknown scheme .http.",
        ),
        (
            "intent: {home: us}\nregions:\n  us: {eu: 1}\n",
            "intent.home needs the per-region form",
        ),
    ],
)
def test_replicated_intent_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_home_intent_redis_may_be_its_registry(tmp_path: Path) -> None:
    text = REPLICATED.replace("redis://10.0.0.2:6379/0", "redis://10.0.0.1:6379/0")
    us = load(tmp_path, text).intent_topology("us-east")
    assert us is not None and us.home_url == "redis://10.0.0.1:6379/0"


def test_version_headers_default_on_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load(tmp_path, NEW).base_intent().version_headers is True
    cfg = load(tmp_path, NEW + "version_headers: false\n")
    assert cfg.version_headers is False
    # fleet.yaml's part of the intent survives the stored intent it is laid over
    assert with_base(Intent(revision=3), cfg.base_intent()).version_headers is False
    with pytest.raises(ConfigError, match="version_headers must be true or false"):
        load(tmp_path, NEW + "version_headers: 'off'\n")
