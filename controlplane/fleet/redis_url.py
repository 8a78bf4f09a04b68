"""Redis URLs: the one place where aixds turns a URL into a Redis client.

Accepted forms (``--redis`` of ``aixds serve`` and ``aixds agent``, fleet.yaml's
``regions.R.redis`` and ``regions.R.intent_redis``):

- ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://...`` (TLS) and
  ``unix://[[USER]:PASSWORD@]/PATH[?db=DB]``: one Redis server, as redis-py reads them.
- ``redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
  [?sentinel_username=U&sentinel_password=P]``: the primary of ``SERVICE`` as Redis
  Sentinel reports it (port 26379 where none is given). The user and password in front
  authenticate to Redis itself; ``sentinel_username`` / ``sentinel_password`` to the
  Sentinels (where they have ``requirepass``). Every new connection asks the Sentinels
  where the primary is, so after a failover the client reaches the new primary as soon
  as its old connections fail.

A malformed URL raises ``RedisUrlError`` (a ``ValueError``) that says what is wrong.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SCHEMES = (*PLAIN_SCHEMES, SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})
FORMS = (
    "redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://..., unix:///PATH[?db=DB] or "
    "redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]"
)

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0


class RedisUrlError(ValueError):
    """A ``--redis`` or fleet.yaml Redis URL that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse(url: str) -> SentinelUrl | None:
    """Check ``url``; a Sentinel URL comes back parsed, a plain one as ``None``.

    Raises ``RedisUrlError`` for anything else.
    """
    if not isinstance(url, str) or "://" not in url:
        raise RedisUrlError(f"not a Redis URL: {url!r}; expected {FORMS}")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise RedisUrlError(f"unknown scheme {scheme!r} in {redact(url)}; expected {FORMS}")
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url)
    _check_plain(url, scheme)
    return None


def argument(value: str) -> str:
    """An argparse ``type=`` for ``--redis``: the URL unchanged, or a usage error."""
    if value:
        try:
            parse(value)
        except RedisUrlError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _check_plain(url: str, scheme: str) -> None:
    parts = urlsplit(url)
    if scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"{redact(url)}: a unix:// URL needs a socket path")
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        if not db.isdigit():
            raise RedisUrlError(f"{redact(url)}: db must be a number, got {db!r}")
        return
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise RedisUrlError(f"{redact(url)}: the port must be a number") from None
    if not parts.hostname:
        raise RedisUrlError(f"{redact(url)}: no host")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise RedisUrlError(f"{redact(url)}: the path must be a database number, got {db!r}")


def _parse_sentinel(url: str) -> SentinelUrl:
    rest = url.split("://", 1)[1]
    where, _, query = rest.partition("?")
    netloc, slash, path = where.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username, password = _userinfo(userinfo)
    sentinels = tuple(_host_port(url, h) for h in hosts.split(","))
    segments = path.split("/") if slash else []
    if not segments or not segments[0]:
        raise RedisUrlError(
            f"{redact(url)}: no service name; Sentinel URLs end in /SERVICE[/DB], "
            "the name in Sentinel's 'sentinel monitor SERVICE ...'"
        )
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise RedisUrlError(
            f"{redact(url)}: expected /SERVICE or /SERVICE/DB (DB a number) after the hosts"
        )
    opts = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(opts) - SENTINEL_QUERY)
    if unknown:
        raise RedisUrlError(
            f"{redact(url)}: unknown option(s) {unknown}; known: {sorted(SENTINEL_QUERY)}"
        )
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(segments[0]),
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=opts.get("sentinel_username", [None])[-1] or None,
        sentinel_password=opts.get("sentinel_password", [None])[-1] or None,
    )


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis-py's reading of redis://SECRET@host: a password alone
        return None, unquote(user)
    return unquote(user) or None, unquote(password)


def _host_port(url: str, item: str) -> tuple[str, int]:
    if not item:
        raise RedisUrlError(f"{redact(url)}: empty Sentinel address (HOST[:PORT],...)")
    if item.startswith("["):  # [IPv6]:PORT
        host, close, port = item[1:].partition("]")
        if not close or (port and not port.startswith(":")):
            raise RedisUrlError(f"{redact(url)}: bad Sentinel address {item!r}")
        port = port[1:]
    else:
        host, _, port = item.partition(":")
    if not host:
        raise RedisUrlError(f"{redact(url)}: no host in Sentinel address {item!r}")
    if not port:
        return host, DEFAULT_SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RedisUrlError(f"{redact(url)}: bad port in Sentinel address {item!r}")
    return host, int(port)


def redact(url: str) -> str:
    """``url`` with its passwords (in front and ``sentinel_password``) shown as ``***``."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    where, q, query = rest.partition("?")
    netloc, slash, path = where.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and userinfo:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
        netloc = f"{userinfo}@{hosts}"
    if query:
        query = "&".join(_redact_option(p) for p in query.split("&"))
    return f"{scheme}://{netloc}{slash}{path}{q}{query}"


def _redact_option(option: str) -> str:
    key = option.partition("=")[0]
    return f"{key}=***" if key in ("password", "sentinel_password") else option


def _client_options() -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": 0,
        # One immediate retry on a fresh connection: after a Redis restart (or a
        # failover) the pooled connections are dead, and the first command on each must
        # not fail the caller.
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
    }


class SentinelRedis(aioredis.Redis):
    """The primary's client; ``aclose()`` also closes its connections to the Sentinels."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            for s in self.sentinel_manager.sentinels:
                await s.aclose()


def connect(url: str) -> aioredis.Redis:
    """A client with short timeouts: an unreachable Redis must fail fast, not hang.

    No I/O happens here; a connection is made (and, for Sentinel, the primary looked up)
    on first use and again after each connection error.
    """
    target = parse(url)
    if target is None:
        return aioredis.Redis.from_url(url, **_client_options())
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            "decode_responses": True,
        },
    )
    client: SentinelRedis = sentinel.master_for(
        target.service,
        redis_class=SentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **_client_options(),
    )
    client.sentinel_manager = sentinel
    return client
