"""kombu's Redis transport, publishing through one Redis client per channel.

kombu builds a new `redis.Redis` client for every message it publishes (`Channel.conn_or_acquire`),
and building one copies redis-py's table of response callbacks — on the web tier, a part of every
answer job sent worth keeping (docs/decisions/0007 has the figure).
The client only wraps the channel's connection pool, which does the actual sharing, so one client
per channel sends exactly the same commands over the same connections.

Used by the apps that only send jobs (web's producer); the worker's consumer keeps kombu's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import redis
from kombu.transport import redis as kombu_redis

# What Celery's `broker_transport` names for this transport.
TRANSPORT = "models.coordination.broker:Transport"


class Channel(kombu_redis.Channel):
    @cached_property
    def _publishing_client(self) -> redis.Redis:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        yield client or self._publishing_client


class Transport(kombu_redis.Transport):
    Channel = Channel
