"""How every connection to Postgres and Redis notices a peer that went silent.

A partition, a NAT or load balancer that forgot the flow, or a failover behind a proxy leaves a
connection half-open: nothing closes it, and a read waits for good. Each kind of connection gets a
bound on that wait: TCP keep-alives (the kernel probes an idle connection and fails it when the
peer stops answering), timeouts on every command, and, for the broker's long-lived connections,
kombu's own checks. Kept here so that web, worker and the broker agree on them.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from .config import Settings

# An idle connection is probed after 10 s, then every 5 s; 3 unanswered probes fail it (~25 s).
TCP_KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}

# libpq's names for the same, and a bound on unacknowledged writes (tcp_user_timeout, ms): a
# statement sent into a dead connection fails within seconds instead of the kernel's ~15 minutes.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


# The Celery broker's connections (kombu's Redis transport): commands (publish, ack, kombu's own
# upkeep) time out after 3 s — the worker's event loop makes them itself, and in a partition each
# one held the loop for its whole timeout (10 s before: jobs, heartbeats and the soft limits' timers
# all waited; tests/faults, the partition scenario). Its checks run every 5 s — a BRPOP whose reply
# is overdue (it is sent with a 1-s server timeout, so a live server always answers) is dropped and
# reconnected within ~11 s, where kombu's default (25) leaves a consumer on a half-open connection
# idle for ~51 s.
BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 3, "socket_connect_timeout": 3, "socket_keepalive": True,
    "socket_keepalive_options": TCP_KEEPALIVE, "health_check_interval": 5,
}


# Where Redis is: REDIS_URL alone, or under Sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER), when
# every use of Redis follows the master the sentinels name and REDIS_URL gives only the database
# number and the password. Each client below asks the sentinels again whenever a connection to the
# master fails, so after a failover every process finds the new master by itself.
SENTINEL_TIMEOUTS: dict[str, Any] = {"socket_timeout": 1, "socket_connect_timeout": 1}


def sentinel_addresses(value: str) -> list[tuple[str, int]]:
    """ "10.0.0.1:26379,10.0.0.2:26379" -> [("10.0.0.1", 26379), ("10.0.0.2", 26379)]."""
    addresses = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _database_and_password(redis_url: str) -> tuple[int, str | None]:
    parts = urlsplit(redis_url)
    path = parts.path.strip("/")
    return (int(path) if path.isdigit() else 0), (unquote(parts.password) if parts.password else None)


def redis_client(settings: Settings, *, socket_timeout: float | None, health_check_interval: int = 30) -> redis.Redis:
    """A redis-py client of the Redis that settings name (its master, under Sentinel)."""
    options: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": socket_timeout,
                               "health_check_interval": health_check_interval, "socket_keepalive": True,
                               "socket_keepalive_options": TCP_KEEPALIVE}
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    db, password = _database_and_password(settings.redis_url)
    sentinel = Sentinel(sentinel_addresses(settings.redis_sentinels), sentinel_kwargs=SENTINEL_TIMEOUTS)
    return sentinel.master_for(settings.redis_sentinel_master, db=db, password=password, **options)


def broker_url(settings: Settings) -> str:
    """The Celery broker: kombu's `sentinel://` transport (one URL per sentinel) under Sentinel."""
    if not settings.redis_sentinels:
        return settings.redis_url
    db, password = _database_and_password(settings.redis_url)
    auth = f":{quote(password, safe='')}@" if password else ""
    sentinels = sentinel_addresses(settings.redis_sentinels)
    return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in sentinels)


def broker_options(settings: Settings) -> dict[str, Any]:
    """What the broker's transport needs besides its URL: the master's name under Sentinel."""
    if not settings.redis_sentinels:
        return {}
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": SENTINEL_TIMEOUTS}


def limiter_storage(settings: Settings) -> tuple[str, dict[str, Any]]:
    """flask-limiter's storage URI and options: the same Redis, its master under Sentinel (whose
    replicas are not read: a count read there may lag the one just written)."""
    timeouts = {"socket_connect_timeout": 1, "socket_timeout": 2}
    if not settings.redis_sentinels:
        return settings.redis_url, timeouts
    db, password = _database_and_password(settings.redis_url)
    hosts = ",".join(f"{host}:{port}" for host, port in sentinel_addresses(settings.redis_sentinels))
    return (f"redis+sentinel://{hosts}/{settings.redis_sentinel_master}",
            {**timeouts, "db": db, **({"password": password} if password else {}), "use_replicas": False,
             "sentinel_kwargs": SENTINEL_TIMEOUTS})
