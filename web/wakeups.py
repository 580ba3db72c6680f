"""One Redis pub/sub connection per web process, shared by all its waiting requests.

A long-poll used to open its own pub/sub connection (a TCP connect and a subscribe per wait, a
Redis connection per idle waiter). Then one connection per process pattern-subscribed to every
message and conversation channel — but then every web process received and parsed every
notification of the whole deployment: one node of 6 gunicorn processes spent 9.4 ms of CPU per
message against 7.2 ms with 2 (bench/matrix.py's CPU accounts), a cost that grew with each process
added. Now the connection subscribes to exactly the channels this process's requests wait on,
for as long as one waits: what a process receives no longer depends on how many there are.

The listener thread only reads. Requests send SUBSCRIBE and UNSUBSCRIBE themselves (redis-py
serialises commands on the connection with its own lock), under our lock so that the order of
commands matches the order of changes to who waits; a request that subscribes waits for Redis's
confirmation before it reads Postgres, so nothing published after its read can pass it by.

What it holds is only who is waiting right now — open sockets' wake-up flags, lost harmlessly with
the process (a waiter re-reads Postgres every RECHECK_SECONDS anyway). No user data.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
Wake = Callable[[dict[str, Any]], bool]
# How long a request waits for Redis to confirm its subscription (a round trip, normally well under
# a millisecond) before it goes on anyway and relies on its re-checks.
CONFIRM_SECONDS = 1.0
# Idle seconds before the first probe, seconds between probes, probes unanswered before it is dead.
KEEPALIVE = {socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 3}


class _Waiter:
    def __init__(self, wake: Wake | None) -> None:
        self.event = threading.Event()
        self.wake = wake


class Wakeups:
    def __init__(self, client: redis.Redis) -> None:
        # The listener blocks on its reads for as long as nothing happens: no socket timeout, and no
        # health-check PINGs, which redis-py would send from the reading thread (commands go out
        # from the waiting requests' threads, under redis-py's lock). TCP keep-alive instead finds
        # a connection that died silently (a NAT or load balancer dropping an idle flow) within a
        # minute or so: the read fails, and the next wait opens a new connection.
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 0,
                  "socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
        self._client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class,
                                                                        **kwargs))
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._confirmed: dict[str, threading.Event] = {}
        self._pubsub: redis.client.PubSub | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def _ensure_listening(self) -> redis.client.PubSub:
        """The listening connection, started in the process that serves requests (never in
        gunicorn's master) and again after a failure."""
        with self._lock:
            if (self._pubsub is not None and self._thread is not None and self._thread.is_alive()
                    and self._pid == os.getpid()):
                return self._pubsub
            pubsub = self._client.pubsub()
            try:
                # A channel of its own keeps the connection subscribed (and the listener reading)
                # while no request waits.
                pubsub.subscribe(f"chatq:wakeups:{uuid.uuid4().hex}", *self._waiters)
            except RedisError:
                pubsub.close()
                raise
            self._pubsub, self._pid = pubsub, os.getpid()
            self._thread = threading.Thread(target=self._listen, args=(pubsub,), name="chatq-wakeups", daemon=True)
            self._thread.start()
            return pubsub

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        try:
            while True:
                message = pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message["type"] == "message":
                    self._deliver(message["channel"], message["data"])
                elif message["type"] == "subscribe":
                    self._confirm(message["channel"])
        except (RedisError, OSError, ValueError, RuntimeError) as error:
            # The next wait starts a new connection; waiting requests fall back to their re-checks.
            log.warning("wakeups_disconnected", error=str(error))
        finally:
            with self._lock:  # no request subscribes on it while it closes, nor after
                if self._pubsub is pubsub:
                    self._pubsub = None
                pubsub.close()

    @staticmethod
    def _name(channel: bytes | str) -> str:
        return channel.decode() if isinstance(channel, bytes) else channel

    def _confirm(self, channel: bytes | str) -> None:
        with self._lock:
            confirmed = self._confirmed.get(self._name(channel))
        if confirmed is not None:
            confirmed.set()

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(self._name(channel), ()))
        if not waiters:
            return
        try:
            payload = json.loads(data)
        except (TypeError, ValueError):
            payload = {}
        for waiter in waiters:
            if waiter.wake is None or waiter.wake(payload):
                waiter.event.set()

    @contextmanager
    def waiting(self, channel: str, wake: Wake | None = None) -> Iterator[threading.Event]:
        """An event set when `channel` gets a notification that `wake` accepts (all, when None).
        On entering, this process is subscribed to the channel (or Redis could not be reached, and
        the waiter relies on its re-checks)."""
        waiter = _Waiter(wake)
        confirmed = self._register(channel, waiter)
        if confirmed is not None:
            confirmed.wait(CONFIRM_SECONDS)
        try:
            yield waiter.event
        finally:
            self._leave(channel, waiter)

    def _register(self, channel: str, waiter: _Waiter) -> threading.Event | None:
        """Add the waiter, subscribing the channel if it is the channel's first. Returns the event
        Redis's confirmation of the subscription sets, or None when there is none to wait for."""
        try:
            pubsub: redis.client.PubSub | None = self._ensure_listening()
        except RedisError as error:
            log.warning("wakeups_unavailable", error=str(error))
            pubsub = None
        with self._lock:
            waiters = self._waiters.setdefault(channel, set())
            first = not waiters
            waiters.add(waiter)
            if pubsub is None or pubsub is not self._pubsub:  # none, or closed since
                return None
            if not first:
                return self._confirmed.get(channel)
            confirmed = self._confirmed[channel] = threading.Event()
            try:
                pubsub.subscribe(channel)
            except RedisError as error:
                log.warning("wakeups_subscribe_failed", error=str(error))
                del self._confirmed[channel]
                return None
            return confirmed

    def _leave(self, channel: str, waiter: _Waiter) -> None:
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
            except RedisError as error:  # the listener notices too, and the next wait reconnects
                log.warning("wakeups_unsubscribe_failed", error=str(error))
