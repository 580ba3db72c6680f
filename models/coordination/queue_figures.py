"""The queue's figures: the recent start rate, counted in Redis as generations start, and from it
a queued message's estimated wait and a refused POST's Retry-After. Postgres decides who starts
next (the scheduler is the claim's SQL, worker/claim_sql.py); these figures only describe it."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError

from .signals import starts_key, user_starts_key

log = structlog.get_logger(__name__)

# Starts are counted per second, service-wide, and the rate is read over the most recent seconds
# that hold RATE_STARTS of them, looking back a minute at most: what the workers do now. A
# minute's average counted the idle time before a backlog began, and told a message 117 s for a
# start 8 s later (issue 37); one start after an idle minute said "about 32 s" of a wait of 4.5.
RATE_STARTS = 10
RATE_WINDOW_SECONDS = 60
# Fewer starts than this in the whole window are no rate to estimate a wait from.
MIN_STARTS = 3
# The busiest users' starts (operators' figure) are counted in 10-second buckets over the minute.
BUCKET_SECONDS = 10
WINDOW_BUCKETS = 6
_KEEP_SECONDS = RATE_WINDOW_SECONDS + 2 * BUCKET_SECONDS


def record_start(pipe: redis.client.Pipeline, user: str, now: float | None = None) -> None:
    """Count a generation's start, service-wide and for its user (into a pipeline the caller
    executes)."""
    now = now or time.time()
    second, bucket = int(now), int(now // BUCKET_SECONDS)
    pipe.incr(starts_key(second))
    pipe.expire(starts_key(second), _KEEP_SECONDS)
    pipe.zincrby(user_starts_key(bucket), 1, user)
    pipe.expire(user_starts_key(bucket), _KEEP_SECONDS)


def start_rate(client: redis.Redis, now: float | None = None) -> float | None:
    """Generations started per second lately: over the most recent seconds holding RATE_STARTS
    starts — this second so far, then whole seconds back — or the whole last minute when fewer
    started in it; None when fewer than MIN_STARTS started in the minute, or Redis cannot say."""
    now = now or time.time()
    current = int(now)
    try:
        counts = client.mget([starts_key(second) for second in range(current, current - RATE_WINDOW_SECONDS, -1)])
    except RedisError as error:
        log.warning("start_rate_unread", error=str(error))
        return None
    totals = list(itertools.accumulate(int(count or 0) for count in counts))  # this second, then back
    back = next((seconds for seconds, total in enumerate(totals) if total >= RATE_STARTS), len(totals) - 1)
    started = totals[back]
    if started < MIN_STARTS:
        return None
    # From the start of the earliest second counted; at least a second, so that a burst of starts
    # in the first moments of this one is not taken for their rate.
    return started / max(1.0, now - (current - back))


def busiest_users(client: redis.Redis, most: int = 10, now: float | None = None) -> list[float]:
    """How many generations each of the `most` busiest users started over the last minute, most
    first: for operators, without naming the users (a metric label per user would grow without
    bound)."""
    try:
        counted = client.zunion(recent_user_starts_keys(now), withscores=True)
    except RedisError as error:
        log.warning("user_starts_unread", error=str(error))
        return []
    return sorted((score for _user, score in counted), reverse=True)[:most]


def recent_user_starts_keys(now: float | None = None, *, kept: bool = False) -> list[str]:
    """The per-user start counts of the last minute's buckets (`kept`: of every bucket still kept)."""
    current = int((now or time.time()) // BUCKET_SECONDS)
    back = _KEEP_SECONDS // BUCKET_SECONDS if kept else WINDOW_BUCKETS
    return [user_starts_key(bucket) for bucket in range(current - back, current + 1)]


def queue_position(ahead: int | None, rate: Callable[[], float | None]) -> dict[str, Any] | None:
    """What a queued message says of its wait: how many messages will start before it, and when
    its own start is expected — it is the (ahead + 1)-th start from now — or None when no recent
    starts give a rate to estimate from. With nothing ahead it starts at the next free slot, which
    nothing here can date (it said "about 0 s" of a wait for a whole reply): no estimate, and the
    most common answer costs no Redis round trip."""
    if ahead is None:
        return None
    if ahead == 0:
        return {"ahead": 0, "eta_seconds": None}
    per_second = rate()
    return {"ahead": ahead, "eta_seconds": math.ceil((ahead + 1) / per_second) if per_second else None}


def retry_after_seconds(ahead: int, rate: float | None, *, default: int = 1, cap: int = 3600) -> int:
    """A Retry-After for a client turned away because the queue is full: about when one of the
    messages ahead of it starts."""
    if not rate:
        return default
    return max(1, min(cap, math.ceil((ahead + 1) / rate)))
