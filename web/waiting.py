"""Long-poll: wait for a change without holding a database connection.

The waiting request subscribes to a Redis channel first (the message's, or the conversation's), then reads Postgres (the
truth), so a change between the two is not missed. It sleeps until a notification that concerns
it arrives, or `recheck_seconds` pass, and reads again. A lost notification therefore costs at
most one re-check interval, never a missed reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError

from .services import release_db, services

log = structlog.get_logger(__name__)
T = TypeVar("T")
Wake = Callable[[dict[str, Any]], bool]


def wait_for(channel: str, read: Callable[[], tuple[T, bool]], seconds: float, wake: Wake | None = None) -> T:
    """Call `read` (which returns a value and whether it is final) until it is final or `seconds`
    have passed; return the last value read. `wake` picks the notifications worth a read."""
    deadline = time.monotonic() + seconds
    recheck = services().settings.recheck_seconds
    pubsub: Any = services().redis.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            pubsub.subscribe(channel)
        except RedisError as error:
            log.warning("wait_without_notifications", error=str(error))
            pubsub = None
        while True:
            value, done = read()
            release_db()  # no connection is held while waiting
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                return value
            pause_until = time.monotonic() + min(remaining, recheck)
            if pubsub is None:
                time.sleep(max(0.0, pause_until - time.monotonic()))
                continue
            try:
                _sleep_until_relevant(pubsub, pause_until, wake)
            except RedisError:
                pubsub = None
    finally:
        if pubsub is not None:
            pubsub.close()


def _sleep_until_relevant(pubsub: Any, until: float, wake: Wake | None) -> None:
    while (left := until - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is None:
            continue
        try:
            payload = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        if wake is None or wake(payload):
            return
