"""One Redis pub/sub connection per web process, shared by all its waiting requests.

Every waiting request — a long-poll or an event stream — registers here for the channels it cares
about. The process's one connection is subscribed to exactly the channels its requests wait on, for
as long as one waits, so what a process receives does not depend on how many processes there are
(one pattern subscription to everything cost each process the parsing of every notification of the
deployment, BENCHMARKS.md), and a waiting client costs a set entry, not a connection.

The listener (a thread; a greenlet under gunicorn's gevent worker) only reads. Requests send
SUBSCRIBE and UNSUBSCRIBE themselves (redis-py serialises commands on the connection), under our
lock so that the order of commands matches the order of changes to who waits; a request that
subscribes waits for Redis's confirmation before it reads Postgres, so nothing published after its
read can pass it by.

When the connection fails, the listener wakes every waiter (each re-reads Postgres, and re-checks
often while `healthy` is false), reconnects with backoff, subscribes again to every channel still
waited on, and wakes every waiter once more: whatever was published in the gap is read from
Postgres, the truth.

What it holds is only who is waiting right now — open sockets' wake-up flags, lost harmlessly with
the process. No user data.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import redis
import structlog
from flask import current_app
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
Wake = Callable[[dict[str, Any]], bool]
W = TypeVar("W", bound="Waiter")
# How long a request waits for Redis to confirm its subscription (a round trip, normally well under
# a millisecond) before it goes on anyway and relies on its re-checks.
CONFIRM_SECONDS = 1.0
RECONNECT_SECONDS = (0.2, 5.0)  # first and longest pause between two attempts to reconnect
# A stream that is not read for a while keeps at most this many undelivered notifications; it
# re-reads Postgres anyway when woken, so dropping the oldest loses no state, only live text.
INBOX_LIMIT = 1000


class Waiter:
    """One waiting request: an event it sleeps on, set by notifications of its channels."""

    parses = True  # whether `notify` needs the notification's JSON (`_deliver` parses it once for all)

    def __init__(self) -> None:
        self.event = threading.Event()
        # Redis confirmed every channel of this waiter: from then on no notification passes it by
        # while the listener stays connected.
        self.subscribed = False

    def notify(self, channel: str, data: str, payload: dict[str, Any] | None) -> None:
        raise NotImplementedError


class LongPoll(Waiter):
    """A long-poll: woken by the first notification `wake` accepts (any, when None)."""

    def __init__(self, wake: Wake | None) -> None:
        super().__init__()
        self.wake = wake
        self.woken_by: dict[str, Any] = {}  # the notification that woke it

    def notify(self, channel: str, data: str, payload: dict[str, Any] | None) -> None:
        if self.wake is None or self.wake(payload or {}):
            self.woken_by = payload or {}
            self.event.set()


class Inbox(Waiter):
    """An event stream: every notification kept, as sent, for `take()`."""

    parses = False

    def __init__(self) -> None:
        super().__init__()
        # Made at the first notification: most waits never get one, and even an empty deque is a
        # sizeable part of what a wait costs (BENCHMARKS.md, memory per wait).
        self.inbox: deque[tuple[str, str]] | None = None

    def notify(self, channel: str, data: str, payload: dict[str, Any] | None) -> None:
        if self.inbox is None:
            self.inbox = deque(maxlen=INBOX_LIMIT)
        self.inbox.append((channel, data))
        self.event.set()

    def take(self) -> list[tuple[str, str]]:
        """The notifications kept since the last call."""
        taken = []
        while self.inbox:
            taken.append(self.inbox.popleft())
        return taken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Wakeups:
    def __init__(self, client: redis.Redis) -> None:
        # `client` is this listener's own (web/services.py): no socket timeout and no health-check
        # PINGs, which redis-py would send from the reading thread; TCP keep-alive instead finds a
        # connection that died silently (a NAT or load balancer dropping an idle flow) within half a
        # minute: the read fails, and the listener reconnects (to the new master, under Sentinel).
        self._client = client
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._confirmed: dict[str, threading.Event] = {}
        self._pubsub: redis.client.PubSub | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        # The process is shutting down: waiting requests answer with what they have, now.
        self.draining = False

    @property
    def healthy(self) -> bool:
        """Notifications reach this process: waiters may rely on them and re-check rarely."""
        return self._pubsub is not None

    def _ensure_listener(self) -> None:
        """The listening thread, started in the process that serves requests (never in gunicorn's
        master, whose children would inherit a thread that does not run)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pubsub, self._pid = None, os.getpid()
            self._thread = threading.Thread(target=self._run, name="chatq-wakeups", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        pause = RECONNECT_SECONDS[0]
        while True:
            try:
                pubsub, subscribed = self._connect()
            except (RedisError, OSError) as error:
                log.warning("wakeups_unavailable", error=str(error))
                time.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(pause * 2, RECONNECT_SECONDS[1])
                continue
            pause = RECONNECT_SECONDS[0]
            self._listen(pubsub, subscribed)
            self._wake_all()  # from now on waiters re-check often, until we are back

    def _connect(self) -> tuple[redis.client.PubSub, int]:
        pubsub = self._client.pubsub()
        with self._lock:
            # A channel of its own keeps the connection subscribed (and the listener reading) while
            # no request waits; then every channel a request waits on.
            try:
                pubsub.subscribe(f"chatq:wakeups:{uuid.uuid4().hex}", *self._waiters)
            except (RedisError, OSError):
                pubsub.close()
                raise
            self._pubsub = pubsub
            return pubsub, 1 + len(self._waiters)

    def _listen(self, pubsub: redis.client.PubSub, unconfirmed: int) -> None:
        # Once Redis has confirmed the `unconfirmed` channels subscribed on connecting, every waiter
        # re-reads Postgres: what was published while this process was not listening is there.
        try:
            while True:
                message = pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "message":
                    self._deliver(_text(message["channel"]), _text(message["data"]))
                elif message["type"] == "subscribe":
                    self._confirm(_text(message["channel"]))
                    unconfirmed -= 1
                    if unconfirmed == 0:
                        self._wake_all()
        except (RedisError, OSError, ValueError, RuntimeError) as error:
            log.warning("wakeups_disconnected", error=str(error))
        finally:
            with self._lock:  # no request subscribes on it while it closes, nor after
                self._pubsub = None
                for confirmed in self._confirmed.values():
                    confirmed.set()  # nobody waits for a confirmation that cannot come
                self._confirmed.clear()
                pubsub.close()

    def drain(self) -> None:
        """Wake every waiting request for good: each answers with what it read (a long-poll) or
        ends (a stream), and its client asks again — on a node that is not leaving."""
        self.draining = True
        self._wake_all()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [waiter for waiters in self._waiters.values() for waiter in waiters]
        for waiter in waiters:
            waiter.event.set()

    def _confirm(self, channel: str) -> None:
        with self._lock:
            # Channels subscribed again on reconnecting get their confirmation recorded too, so a
            # later waiter of the same channel knows it is subscribed.
            confirmed = self._confirmed.setdefault(channel, threading.Event()) if channel in self._waiters else None
        if confirmed is not None:
            confirmed.set()

    def _deliver(self, channel: str, data: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(channel, ()))
        if not waiters:
            return
        payload = None
        if any(waiter.parses for waiter in waiters):
            try:
                payload = json.loads(data)
            except (TypeError, ValueError):
                payload = {}
        for waiter in waiters:
            waiter.notify(channel, data, payload)

    def waiting(self, *channels: str, wake: Wake | None = None) -> AbstractContextManager[LongPoll]:
        """A long-poll woken when one of `channels` gets a notification that `wake` accepts."""
        return self._waiting(LongPoll(wake), channels)

    def streaming(self, *channels: str) -> AbstractContextManager[Inbox]:
        """An event stream's inbox of every notification of `channels`."""
        return self._waiting(Inbox(), channels)

    @contextmanager
    def _waiting(self, waiter: W, channels: tuple[str, ...]) -> Iterator[W]:
        """On entering, this process is subscribed to the channels, or notifications are down and
        the waiter relies on its re-checks (`subscribed` says which)."""
        self._ensure_listener()
        pending = [self._register(channel, waiter) for channel in channels]
        deadline = time.monotonic() + CONFIRM_SECONDS
        waiter.subscribed = all(confirmed is not None and confirmed.wait(max(0.0, deadline - time.monotonic()))
                                for confirmed in pending)
        try:
            yield waiter
        finally:
            for channel in channels:
                self._leave(channel, waiter)

    def _register(self, channel: str, waiter: Waiter) -> threading.Event | None:
        """Add the waiter, subscribing the channel if it is the channel's first. Returns the event
        Redis's confirmation of the subscription sets, or None when there is none to wait for."""
        with self._lock:
            waiters = self._waiters.setdefault(channel, set())
            first = not waiters
            waiters.add(waiter)
            pubsub = self._pubsub
            if pubsub is None:  # the listener subscribes every waited channel when it reconnects
                return None
            if not first:
                return self._confirmed.get(channel)
            confirmed = self._confirmed[channel] = threading.Event()
            try:
                pubsub.subscribe(channel)
            except (RedisError, OSError) as error:
                log.warning("wakeups_subscribe_failed", error=str(error))
                del self._confirmed[channel]
                return None
            return confirmed

    def _leave(self, channel: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(channel)
            if waiters is None:
                return
            waiters.discard(waiter)
            if waiters:
                return
            del self._waiters[channel]
            self._confirmed.pop(channel, None)
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                pubsub.unsubscribe(channel)
            except (RedisError, OSError) as error:  # the listener notices too, and reconnects
                log.warning("wakeups_unsubscribe_failed", error=str(error))


def wakeups() -> Wakeups:
    """This process's one listener (made by web/services.py at start)."""
    return current_app.extensions["chatq.wakeups"]
