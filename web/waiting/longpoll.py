"""The long-poll: a waiting request that reads Postgres until what it waits for is final.

It registers for a Redis channel first (the message's, or the conversation's), then reads Postgres
(the truth), so a change between the two is not missed. It sleeps until a notification that
concerns it arrives, or a re-check is due, and reads again — unless the notification is the final
value itself: a message's answer, which the worker publishes as it committed it, answers that
message's long-polls without another read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from ..services import release_db, services, use_wait_pool
from .admission import admitted
from .wakeups import Wake, wakeups

T = TypeVar("T")


def recheck_after() -> float:
    """Seconds until a waiter reads Postgres again unless a notification wakes it first: rarely
    while notifications arrive, often while they cannot. Jittered, so that thousands of waits
    started together do not re-read together."""
    settings = services().settings
    interval = settings.recheck_seconds if wakeups().healthy else settings.fallback_recheck_seconds
    return interval * random.uniform(0.8, 1.0)


def wait_for(channel: str, read: Callable[[], tuple[T, bool]], seconds: float, wake: Wake | None = None,
             answer: Callable[[dict[str, Any]], T | None] | None = None, admit: bool = True) -> T:
    """Call `read` (which returns a value and whether it is final) until it is final or `seconds`
    have passed; return the last value read. `wake` picks the notifications worth a read; `answer`
    turns the notification that woke the wait into the final value when it carries one (no read).
    `admit=False`: the caller already holds this request's place among the waiting (`admitted`)."""
    deadline = time.monotonic() + seconds
    with admitted() if admit else nullcontext(), wakeups().waiting(channel, wake=wake) as waiter:
        use_wait_pool()
        while True:
            waiter.event.clear()
            value, done = read()
            release_db()  # no connection is held while waiting
            remaining = deadline - time.monotonic()
            if done or remaining <= 0 or wakeups().draining:
                return value
            woken = waiter.event.wait(min(remaining, recheck_after()))
            carried = answer(waiter.woken_by) if woken and answer is not None else None
            if carried is not None:
                return carried
            if not woken and time.monotonic() >= deadline and waiter.subscribed and wakeups().healthy:
                # Nothing was published for this wait, and anything published would have reached
                # it (a disconnect or reconnect wakes every waiter): what was read is still true.
                return value
