"""The Redis client of the state store: connection settings, and every Redis failure as a 503 (fail closed)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from appliance.config import GatewaySettings
from appliance.errors import ConfigError, StateStoreUnavailable

log = structlog.get_logger("appliance.gateway")


FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def unavailable(op: str, exc: BaseException) -> StateStoreUnavailable:
    """The 503 for a failed Redis call; logs the operation and the error class (never the URL or a value)."""
    log.error("state.unavailable", op=op, error_class=type(exc).__name__)
    return StateStoreUnavailable("the shared state store cannot be reached; try again shortly")


def connect(g: GatewaySettings) -> Redis:
    """A Redis client from gateway settings: short timeouts, one retry (a stale pooled connection), no backoff,
    and a bounded pool that makes a request wait (up to the timeout) for a free connection rather than fail."""
    if g.redis_url is None:
        raise ConfigError("gateway.state_store = 'redis' needs gateway.redis_url")
    url = g.redis_url.get_secret_value()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise ConfigError("gateway.redis_url must be a redis:// or rediss:// (TLS) URL")
    tls: dict[str, Any] = {}
    if scheme == "rediss" and g.redis_ca_cert:
        tls["ssl_ca_certs"] = g.redis_ca_cert
    if (g.redis_client_cert is None) != (g.redis_client_key is None):
        raise ConfigError("set gateway.redis_client_cert and gateway.redis_client_key together, or neither")
    if g.redis_client_cert is not None:
        if scheme != "rediss":
            raise ConfigError("a Redis client certificate needs a rediss:// (TLS) gateway.redis_url")
        tls["ssl_certfile"], tls["ssl_keyfile"] = g.redis_client_cert, g.redis_client_key
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=g.redis_max_connections,
            timeout=g.redis_timeout_s,
            socket_timeout=g.redis_timeout_s,
            socket_connect_timeout=g.redis_timeout_s,
            retry=Retry(NoBackoff(), 1),
            client_name="appliance-gateway",
            **tls,
        )
    except ValueError:  # the message may quote the URL
        raise ConfigError("gateway.redis_url is not a valid Redis URL") from None
    return Redis.from_pool(pool)
