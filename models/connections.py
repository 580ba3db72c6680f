"""How every connection to Postgres and Redis notices a peer that went silent.

A partition, a NAT or load balancer that forgot the flow, or a failover behind a proxy leaves a
connection half-open: nothing closes it, and a read waits for good. Each kind of connection gets a
bound on that wait: TCP keep-alives (the kernel probes an idle connection and fails it when the
peer stops answering), timeouts on every command, and, for the broker's long-lived connections,
kombu's own checks. Kept here so that web, worker and the broker agree on them.
"""

from __future__ import annotations

import socket
from typing import Any

# An idle connection is probed after 10 s, then every 5 s; 3 unanswered probes fail it (~25 s).
TCP_KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}

# libpq's names for the same, and a bound on unacknowledged writes (tcp_user_timeout, ms): a
# statement sent into a dead connection fails within seconds instead of the kernel's ~15 minutes.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def redis_options(*, socket_timeout: float) -> dict[str, Any]:
    """For a redis-py client that sends commands and waits at most `socket_timeout` for each."""
    return {"socket_connect_timeout": 1, "socket_timeout": socket_timeout, "socket_keepalive": True,
            "socket_keepalive_options": TCP_KEEPALIVE, "health_check_interval": 30}


# The Celery broker's connections (kombu's Redis transport): commands (publish, ack) time out after
# 10 s, and its checks run every 5 s — a BRPOP whose reply is overdue (it is sent with a 1-s server
# timeout, so a live server always answers) is dropped and reconnected within ~11 s, where kombu's
# default (25) leaves a consumer on a half-open connection idle for ~51 s.
BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10, "socket_connect_timeout": 3, "socket_keepalive": True,
    "socket_keepalive_options": TCP_KEEPALIVE, "health_check_interval": 5,
}
