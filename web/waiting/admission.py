"""Admission: how many waiting requests (long-polls, event streams), streaming exports and searches this
process holds, in all and per user. A waiting request costs a parked greenlet, a socket and an
entry in wakeups.py — no thread, and no database connection while it sleeps — so what bounds how
many a process holds is this count: past `MAX_WAITS` a new one is answered 503 at once (the load
balancer or the client tries again, elsewhere or later), and one user holds at most
`MAX_WAITS_PER_USER` of them (429), so nobody can take the node's capacity from everyone else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app, g
from prometheus_client import Counter, Gauge

from models import Settings

from ..metrics import EXPORTING, EXPORTS_REFUSED, SEARCHES_REFUSED, SEARCHING, WAITING, WAITS_REFUSED
from ..problems import Problem

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
    app.extensions["chatq.searches"] = Admission(settings.max_searches, settings.max_searches_per_user,
                                                 kind="searches", noun="searches running", held=SEARCHING,
                                                 refused=SEARCHES_REFUSED)


def admission() -> Admission:
    return current_app.extensions["chatq.admission"]


def exports() -> Admission:
    return current_app.extensions["chatq.exports"]


def searches() -> Admission:
    return current_app.extensions["chatq.searches"]


@contextmanager
def admitted() -> Iterator[None]:
    """The body runs as one of this process's waiting requests (or a 503/429 is raised)."""
    admission().enter(g.user)
    try:
        yield
    finally:
        admission().leave(g.user)
