"""Long-poll: wait for a change without holding a database connection.

The waiting request registers for a Redis channel first (the message's, or the conversation's;
see web/wakeups.py), then reads Postgres (the truth), so a change between the two is not missed.
It sleeps until a notification that concerns it arrives, or `recheck_seconds` pass, and reads
again. A lost notification therefore costs at most one re-check interval, never a missed reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from flask import current_app

from .services import release_db, services
from .wakeups import Wake

T = TypeVar("T")


def wait_for(channel: str, read: Callable[[], tuple[T, bool]], seconds: float, wake: Wake | None = None) -> T:
    """Call `read` (which returns a value and whether it is final) until it is final or `seconds`
    have passed; return the last value read. `wake` picks the notifications worth a read."""
    deadline = time.monotonic() + seconds
    recheck = services().settings.recheck_seconds
    with current_app.extensions["chatq.wakeups"].waiting(channel, wake) as changed:
        while True:
            changed.clear()
            value, done = read()
            release_db()  # no connection is held while waiting
            remaining = deadline - time.monotonic()
            if done or remaining <= 0:
                return value
            changed.wait(min(remaining, recheck))
