"""Long-poll: wait for a change without holding a database connection.

The waiting request subscribes to the conversation's Redis channel, then reads Postgres (the
truth). It sleeps until a notification arrives or `recheck_seconds` pass, and reads again. A lost
notification therefore costs at most one re-check interval, never a missed reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

from models.signals import conversation_channel

from .services import release_db, services

log = structlog.get_logger(__name__)
T = TypeVar("T")


def wait_for(conversation_id: object, read: Callable[[], tuple[T, bool]], seconds: float) -> T:
    """Call `read` (which returns a value and whether it is final) until it is final or `seconds`
    have passed; return the last value read."""
    value, done = read()
    if done or seconds <= 0:
        return value
    deadline = time.monotonic() + seconds
    recheck = services().settings.recheck_seconds
    pubsub = services().redis.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            pubsub.subscribe(conversation_channel(conversation_id))
        except RedisError as error:
            log.warning("wait_without_notifications", error=str(error))
            pubsub = None
        while True:
            release_db()
            value, done = read()  # read after subscribing: a change in between is not missed
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                return value
            release_db()
            pause = min(remaining, recheck)
            if pubsub is None:
                time.sleep(pause)
                continue
            try:
                pubsub.get_message(timeout=pause)
            except RedisError:
                pubsub = None
    finally:
        if pubsub is not None:
            pubsub.close()
