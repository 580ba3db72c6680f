"""Waiting requests: admission, and the long-poll loop.

A waiting request (a long-poll, an event stream) costs this process a parked greenlet, a socket and
an entry in web/wakeups.py — no thread, and no database connection while it sleeps. What bounds
how many a process holds is admission: past `MAX_WAITS` a new one is answered 503 at once (the load
balancer or the client tries again, elsewhere or later), and one user holds at most
`MAX_WAITS_PER_USER` of them (429), so nobody can take the node's capacity from everyone else.

The long-poll registers for a Redis channel first (the message's, or the conversation's), then
reads Postgres (the truth), so a change between the two is not missed. It sleeps until a
notification that concerns it arrives, or a re-check is due, and reads again — unless the
notification is the final value itself: a message's answer, which the worker publishes as it
committed it, answers that message's long-polls without another read.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import current_app, g

from models import Settings

from .metrics import WAITING, WAITS_REFUSED
from .problems import Problem
from .services import release_db, services, use_wait_pool
from .wakeups import Wake, Wakeups

T = TypeVar("T")
RETRY_AFTER = "2"  # seconds a refused waiter should pause before asking again


class Admission:
    """How many requests wait in this process right now, in all and per user: counts of open
    sockets, gone with the process, like the sockets themselves."""

    def __init__(self, limit: int, per_user: int) -> None:
        self.limit = limit
        self.per_user = per_user
        self._lock = threading.Lock()
        self._total = 0
        self._by_user: dict[str, int] = {}

    def enter(self, user: str) -> None:
        """Count one more waiting request of `user`, or raise the problem that refuses it."""
        with self._lock:
            if self._total >= self.limit:
                WAITS_REFUSED.labels("node").inc()
                raise Problem(503, "This node holds as many waiting requests as it may; retry shortly.",
                              slug="too-many-waits", headers={"Retry-After": RETRY_AFTER})
            held = self._by_user.get(user, 0)
            if held >= self.per_user:
                WAITS_REFUSED.labels("user").inc()
                raise Problem(429, f"You already hold {held} waiting requests on this node; close one or "
                                   "poll without wait.", slug="too-many-waits-per-user",
                              headers={"Retry-After": RETRY_AFTER})
            self._total += 1
            self._by_user[user] = held + 1
        WAITING.inc()

    def leave(self, user: str) -> None:
        with self._lock:
            self._total -= 1
            held = self._by_user.pop(user, 1) - 1
            if held:
                self._by_user[user] = held
        WAITING.dec()


def init_app(app, settings: Settings) -> None:
    app.extensions["chatq.admission"] = Admission(settings.max_waits, settings.max_waits_per_user)


def admission() -> Admission:
    return current_app.extensions["chatq.admission"]


def wakeups() -> Wakeups:
    return current_app.extensions["chatq.wakeups"]


@contextmanager
def admitted() -> Iterator[None]:
    """The body runs as one of this process's waiting requests (or a 503/429 is raised)."""
    admission().enter(g.user)
    try:
        yield
    finally:
        admission().leave(g.user)


def recheck_after() -> float:
    """Seconds until a waiter reads Postgres again unless a notification wakes it first: rarely
    while notifications arrive, often while they cannot. Jittered, so that thousands of waits
    started together do not re-read together."""
    settings = services().settings
    interval = settings.recheck_seconds if wakeups().healthy else settings.fallback_recheck_seconds
    return interval * random.uniform(0.8, 1.0)


def wait_for(channel: str, read: Callable[[], tuple[T, bool]], seconds: float, wake: Wake | None = None,
             answer: Callable[[dict[str, Any]], T | None] | None = None) -> T:
    """Call `read` (which returns a value and whether it is final) until it is final or `seconds`
    have passed; return the last value read. `wake` picks the notifications worth a read; `answer`
    turns the notification that woke the wait into the final value when it carries one (no read)."""
    deadline = time.monotonic() + seconds
    with admitted(), wakeups().waiting(channel, wake=wake) as waiter:
        use_wait_pool()
        while True:
            waiter.event.clear()
            value, done = read()
            release_db()  # no connection is held while waiting
            remaining = deadline - time.monotonic()
            if done or remaining <= 0 or wakeups().draining:
                return value
            woken = waiter.event.wait(min(remaining, recheck_after()))
            told = answer(waiter.woken_by) if woken and answer is not None else None
            if told is not None:
                return told
            if not woken and time.monotonic() >= deadline and waiter.subscribed and wakeups().healthy:
                # Nothing was published for this wait, and anything published would have reached
                # it (a disconnect or reconnect wakes every waiter): what was read is still true.
                return value
