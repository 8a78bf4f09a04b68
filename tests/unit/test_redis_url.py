"""Redis URLs (``controlplane.fleet.redis_url``): the Sentinel form parsed exactly, plain
forms left to redis-py, and a clear error for each malformed URL."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import redis.asyncio as aioredis

from controlplane.fleet.redis_url import (
    RedisUrlError,
    SentinelRedis,
    SentinelUrl,
    argument,
    connect,
    parse,
    redact,
)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.internal/3",
        "redis://user:secret@[::1]:6380",
        "rediss://redis.internal:6380/0",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_plain_urls_are_accepted_and_not_sentinel(url: str) -> None:
    assert parse(url) is None
    assert argument(url) == url


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/mymaster",
            SentinelUrl(
                sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)),
                service="mymaster",
            ),
        ),
        (
            "redis+sentinel://:s%40cret@h1,h2/aixds/2?sentinel_password=sp",
            SentinelUrl(
                sentinels=(("h1", 26379), ("h2", 26379)),
                service="aixds",
                db=2,
                password="s@cret",
                sentinel_password="sp",
            ),
        ),
        (
            "redis+sentinel://app:pw@[::1]:5000/m?sentinel_username=su&sentinel_password=sp",
            SentinelUrl(
                sentinels=(("::1", 5000),),
                service="m",
                username="app",
                password="pw",
                sentinel_username="su",
                sentinel_password="sp",
            ),
        ),
        (
            "redis+sentinel://pw@h/m/",
            None,  # a trailing slash after the service is not a DB number
        ),
    ],
)
def test_sentinel_url_parts(url: str, want: SentinelUrl | None) -> None:
    if want is None:
        with pytest.raises(RedisUrlError, match="/SERVICE or /SERVICE/DB"):
            parse(url)
    else:
        assert parse(url) == want


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "not a Redis URL"),
        ("127.0.0.1:6379", "not a Redis URL"),
        ("http://127.0.0.1:6379/0", "unknown scheme 'http'"),
        ("sentinel://h:26379/m", "unknown scheme 'sentinel'"),
        ("redis://127.0.0.1:63x9/0", "the port must be a number"),
        ("redis:///0", "no host"),
        ("redis://h:6379/zero", "database number, got 'zero'"),
        ("unix://", "needs a socket path"),
        ("unix:///run/r.sock?db=x", "db must be a number"),
        ("redis+sentinel://h1:26379", "no service name"),
        ("redis+sentinel://h1:26379/", "no service name"),
        ("redis+sentinel://h1:26379/m/x", "/SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h1:26379/m/0/1", "/SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h1:26379,,h2/m", "empty Sentinel address"),
        ("redis+sentinel:///m", "empty Sentinel address"),
        ("redis+sentinel://h1:port/m", "bad port in Sentinel address 'h1:port'"),
        ("redis+sentinel://h1:0/m", "bad port"),
        ("redis+sentinel://h1:65536/m", "bad port"),
        ("redis+sentinel://:26379/m", "no host in Sentinel address"),
        ("redis+sentinel://[::1/m", "bad Sentinel address"),
        ("redis+sentinel://h/m?db=1", r"unknown option\(s\) \['db'\]"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        parse(url)
    if url:  # an empty --redis means the default
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            argument(url)


def test_errors_and_logs_never_show_passwords() -> None:
    url = "redis+sentinel://app:hunter2@h1:port/m?sentinel_password=hunter3"
    with pytest.raises(RedisUrlError) as e:
        parse(url)
    assert "hunter" not in str(e.value)
    assert redact(url) == "redis+sentinel://app:***@h1:port/m?sentinel_password=***"
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_empty_argument_means_the_default() -> None:
    assert argument("") == ""


def test_connect_builds_clients_without_io() -> None:
    """No connection is made until first use; the Sentinel client knows its Sentinels."""

    async def main() -> None:
        plain = connect("redis://127.0.0.1:1/0")
        assert not isinstance(plain, SentinelRedis)
        await plain.aclose()
        ha = connect("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/3")
        assert isinstance(ha, SentinelRedis) and ha.sentinel_manager is not None
        hosts = [s.connection_pool.connection_kwargs["port"] for s in ha.sentinel_manager.sentinels]
        assert hosts == [1, 2]
        kw = ha.connection_pool.connection_kwargs
        assert (kw["db"], kw["password"], kw["socket_connect_timeout"]) == (3, "pw", 1.0)
        # nothing listens on ports 1 and 2: the first command fails fast, naming the service
        with pytest.raises(aioredis.ConnectionError, match="mymaster"):
            await asyncio.wait_for(ha.ping(), 10)
        await ha.aclose()

    asyncio.run(main())
