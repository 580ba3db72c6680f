"""The queue's figures: the recent start rate, counted in Redis as generations start, and from it
a queued message's estimated wait and a refused POST's Retry-After. Postgres decides who starts
next (the scheduler is the claim's SQL, worker/claim_sql.py); these figures only describe it."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError

from .signals import RECENT_STARTS_KEY, user_starts_key

log = structlog.get_logger(__name__)

# The recent starts are kept by time, the last minute's, and the rate is read from the most recent
# RATE_STARTS of them: what the workers do now. A minute's average counted the idle time before a
# backlog began, and told a message 82 s for a start 3.4 s later (issue 37 saw 117 s for 8 s); one
# start after an idle minute said "about 32 s" of a wait of 4.5.
RATE_STARTS = 20
RATE_WINDOW_SECONDS = 60
# Fewer starts than this in the whole window are no rate to estimate a wait from.
MIN_STARTS = 3
# The busiest users' starts (operators' figure) are counted in 10-second buckets over the minute.
BUCKET_SECONDS = 10
WINDOW_BUCKETS = 6
_KEEP_SECONDS = BUCKET_SECONDS * (WINDOW_BUCKETS + 2)


def record_start(pipe: redis.client.Pipeline, user: str, now: float | None = None) -> None:
    """Count a generation's start, service-wide and for its user (into a pipeline the caller
    executes). A start is kept under a name of its own that says nothing of whose it is: an erasure
    need not look for it."""
    now = now or time.time()
    pipe.zadd(RECENT_STARTS_KEY, {uuid.uuid4().hex: now})
    pipe.zremrangebyscore(RECENT_STARTS_KEY, "-inf", now - RATE_WINDOW_SECONDS)
    pipe.expire(RECENT_STARTS_KEY, RATE_WINDOW_SECONDS)
    bucket = user_starts_key(int(now // BUCKET_SECONDS))
    pipe.zincrby(bucket, 1, user)
    pipe.expire(bucket, _KEEP_SECONDS)


def start_rate(client: redis.Redis, now: float | None = None) -> float | None:
    """Generations started per second lately: the intervals between the last RATE_STARTS starts
    (or as many as started in the last minute), over the time since the earliest of them; None when
    fewer than MIN_STARTS started in the minute, or Redis cannot say."""
    now = now or time.time()
    try:
        recent = client.zrevrangebyscore(RECENT_STARTS_KEY, "+inf", now - RATE_WINDOW_SECONDS, start=0,
                                         num=RATE_STARTS, withscores=True)
    except RedisError as error:
        log.warning("start_rate_unread", error=str(error))
        return None
    if len(recent) < MIN_STARTS:
        return None
    # Over half a second at least: a burst of starts a moment ago is not their rate.
    return (len(recent) - 1) / max(0.5, now - recent[-1][1])


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
