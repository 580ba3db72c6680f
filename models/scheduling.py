"""What the scheduler tells people: the recent start rate (counted in Redis as generations start)
and, from it, a queued message's estimated wait. Postgres decides who starts next
(worker/claim_sql.py); these figures only describe it."""

from __future__ import annotations

import math
import time
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError

from .signals import starts_key

log = structlog.get_logger(__name__)

BUCKET_SECONDS = 10
WINDOW_BUCKETS = 6  # the rate is taken over the last minute
_KEEP_SECONDS = BUCKET_SECONDS * (WINDOW_BUCKETS + 2)


def record_start(pipe: redis.client.Pipeline, now: float | None = None) -> None:
    """Count a generation's start (into a pipeline the caller executes)."""
    key = starts_key(int((now or time.time()) // BUCKET_SECONDS))
    pipe.incr(key)
    pipe.expire(key, _KEEP_SECONDS)


def start_rate(client: redis.Redis, now: float | None = None) -> float | None:
    """Generations started per second over the last minute (the current bucket counted for the
    part of it that has passed); None when none started or Redis cannot say."""
    now = now or time.time()
    current = int(now // BUCKET_SECONDS)
    try:
        counts = client.mget([starts_key(bucket) for bucket in range(current - WINDOW_BUCKETS, current + 1)])
    except RedisError as error:
        log.warning("start_rate_unread", error=str(error))
        return None
    started = sum(int(count) for count in counts if count is not None)
    if not started:
        return None
    return started / (WINDOW_BUCKETS * BUCKET_SECONDS + (now - current * BUCKET_SECONDS))


def queue_position(ahead: int | None, rate: float | None) -> dict[str, Any] | None:
    """What a queued message says of its wait: how many messages will start before it, and when
    its own start is expected (None when no recent start gives a rate to estimate from)."""
    if ahead is None:
        return None
    return {"ahead": ahead, "eta_seconds": math.ceil(ahead / rate) if rate else None}


def retry_after_seconds(ahead: int, rate: float | None, *, default: int = 1, cap: int = 3600) -> int:
    """A Retry-After for a client turned away because the queue is full: about when one of the
    messages ahead of it starts."""
    if not rate:
        return default
    return max(1, min(cap, math.ceil((ahead + 1) / rate)))
