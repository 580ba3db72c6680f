"""One Redis subscription per web process, shared by all its waiting requests.

A long-poll used to open its own pub/sub connection (a TCP connect and a subscribe per wait, a
Redis connection per idle waiter). Instead one thread per process pattern-subscribes to the
message and conversation channels and sets the events of the requests waiting on each channel.
What it holds is only who is waiting right now — open sockets' wake-up flags, lost harmlessly with
the process (a waiter re-reads Postgres every RECHECK_SECONDS anyway). No user data.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
PATTERNS = ("chatq:message:*", "chatq:conversation:*")
Wake = Callable[[dict[str, Any]], bool]


class _Waiter:
    def __init__(self, wake: Wake | None) -> None:
        self.event = threading.Event()
        self.wake = wake


class Wakeups:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def _ensure_listening(self) -> None:
        with self._lock:
            # Started lazily in the process that serves requests (never in gunicorn's master).
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._listen, name="chatq-wakeups", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(*PATTERNS)
                for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        self._deliver(message["channel"], message["data"])
            except RedisError as error:
                log.warning("wakeups_reconnecting", error=str(error))
                time.sleep(1)
            finally:
                pubsub.close()

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        with self._lock:
            if name not in self._waiters:  # e.g. a model's streamed text: nobody long-polls that
                return
        try:
            payload = json.loads(data)
        except (TypeError, ValueError):
            payload = {}
        with self._lock:
            waiters = list(self._waiters.get(name, ()))
        for waiter in waiters:
            if waiter.wake is None or waiter.wake(payload):
                waiter.event.set()

    @contextmanager
    def waiting(self, channel: str, wake: Wake | None = None) -> Iterator[threading.Event]:
        """An event set when `channel` gets a notification that `wake` accepts (all, when None)."""
        self._ensure_listening()
        waiter = _Waiter(wake)
        with self._lock:
            self._waiters[channel].add(waiter)
        try:
            yield waiter.event
        finally:
            with self._lock:
                self._waiters[channel].discard(waiter)
                if not self._waiters[channel]:
                    del self._waiters[channel]
