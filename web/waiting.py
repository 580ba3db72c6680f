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
from prometheus_client import Counter, Gauge

from models import Settings

from .metrics import EXPORTING, EXPORTS_REFUSED, WAITING, WAITS_REFUSED
from .problems import Problem
from .services import release_db, services, use_wait_pool
from .wakeups import Wake, Wakeups

T = TypeVar("T")
RETRY_AFTER = "2"  # seconds a refused waiter should pause before asking again


class Admission:
    """How many requests of one kind this process holds right now, in all and per user: counts of
    open sockets, gone with the process, like the sockets themselves. Past `limit` a new one is
    answered 503 at once (another node, or this one shortly, can take it); past `per_user` of one
    user's, 429 (nobody takes the node's capacity from everyone else)."""

    def __init__(self, limit: int, per_user: int, *, kind: str = "waits", noun: str = "waiting requests",
                 held: Gauge = WAITING, refused: Counter = WAITS_REFUSED) -> None:
        self.limit = limit
        self.per_user = per_user
        self.kind, self.noun = kind, noun
        self._held, self._refused = held, refused
        self._lock = threading.Lock()
        self._total = 0
        self._by_user: dict[str, int] = {}

    def enter(self, user: str) -> None:
        """Count one more request of `user`, or raise the problem that refuses it."""
        with self._lock:
            if self._total >= self.limit:
                self._refused.labels("node").inc()
                raise Problem(503, f"This node holds as many {self.noun} as it may; retry shortly.",
                              slug=f"too-many-{self.kind}", headers={"Retry-After": RETRY_AFTER})
            held = self._by_user.get(user, 0)
            if held >= self.per_user:
                self._refused.labels("user").inc()
                raise Problem(429, f"You already hold {held} {self.noun} on this node; let one finish or close it.",
                              slug=f"too-many-{self.kind}-per-user", headers={"Retry-After": RETRY_AFTER})
            self._total += 1
            self._by_user[user] = held + 1
        self._held.inc()

    def leave(self, user: str) -> None:
        with self._lock:
            self._total -= 1
            held = self._by_user.pop(user, 1) - 1
            if held:
                self._by_user[user] = held
        self._held.dec()


def init_app(app, settings: Settings) -> None:
    app.extensions["chatq.admission"] = Admission(settings.max_waits, settings.max_waits_per_user)
    app.extensions["chatq.exports"] = Admission(settings.max_exports, settings.max_exports_per_user, kind="exports",
                                                noun="exports streaming", held=EXPORTING, refused=EXPORTS_REFUSED)


def admission() -> Admission:
    return current_app.extensions["chatq.admission"]


def exports() -> Admission:
    return current_app.extensions["chatq.exports"]


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
