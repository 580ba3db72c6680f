"""The gevent worker gunicorn.conf.py names, that chatq's web runs under. Imported by gunicorn's
master after the config has run (so after prometheus-client's multiprocess folder is set), and never
by the app: the worker patches the standard library (gevent) when it starts, before the app is
imported.

It leans on gunicorn's internals (`AsyncWorker.handle` past the gevent worker's own, the end of
`handle_request`): tests/test_operations.py and tests/test_security.py hold what it must do — a
silent client disconnected; every waiting request answered at a SIGTERM, its connection closed —
and fail when a gunicorn upgrade changes what it stands on. The access line is gunicorn's own
logger's (a cheaper copy of its atoms bought nothing measurable: docs/decisions/0007).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import weakref

import gevent
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from models import Settings


class _SilenceEnds:
    """A client socket whose reads and writes give up after `client_timeout_seconds` of silence.

    A timed-out read is taken as the end of the connection (gunicorn drops a request head cut off
    there; the app answers a cut-off body with 400), a timed-out write as a client gone away: both
    paths gunicorn already treats as a client leaving, without a traceback in the log.
    """

    def __init__(self, sock) -> None:
        self._sock = sock
        self._answered = False  # the last thing done on it was sending (part of) an answer
        # Waiting for a next request after an answer, with nothing of it read yet: an idle
        # keep-alive connection, which a leaving process closes at once (Worker.handle_exit).
        self.idle = False

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, *args):
        self.idle = self._answered
        try:
            data = self._sock.recv(*args)
        except TimeoutError:
            data = b""
        self.idle = self._answered = False
        return data

    def sendall(self, data, *args):
        try:
            result = self._sock.sendall(data, *args)
        except TimeoutError as error:
            raise BrokenPipeError(errno.EPIPE, "the client stopped reading") from error
        self._answered = True
        return result


class Worker(GeventWorker):
    """gunicorn's gevent worker, with a deadline on every read and write of a client's socket.

    gunicorn bounds reading a request's head by `keepalive` seconds, but not a body sent a byte at
    a time, nor a client that stops reading an event stream: each would hold its connection for
    good (slowloris). A long-poll does not touch its socket while it waits: the deadline never ends
    a wait, only a silent client.
    """

    def init_process(self):
        # This process's open client connections (a weak set: a closed one leaves by itself).
        self.clients = weakref.WeakSet()
        self.client_timeout = Settings.from_env().client_timeout_seconds
        super().init_process()

    def handle_exit(self, sig, frame):
        """SIGTERM (a deploy): stop accepting, and answer every waiting request now — a long-poll
        with what it has, a stream by ending — so that none is cut off at graceful_timeout; their
        clients ask again on a node that is not leaving (web/waiting/wakeups.py `drain`). Idle keep-alive
        connections (a load balancer's pool) are closed at once too: otherwise each would hold the
        process until graceful_timeout. A balancer drops a pooled connection its upstream closed."""
        super().handle_exit(sig, frame)
        drain = getattr(getattr(self, "wsgi", None), "extensions", {}).get("chatq.drain")
        if drain is not None:
            gevent.spawn(drain)  # not in the signal handler itself: it takes locks
        gevent.spawn(self._close_idle)

    def _close_idle(self):
        for client in list(self.clients):
            if client.idle:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)

    def handle_request(self, listener_name, req, sock, addr):
        super().handle_request(listener_name, req, sock, addr)
        if not self.alive:
            # Leaving: no connection is kept open after its answer (gunicorn decides keep-alive when
            # a request starts, and a drained long-poll started before the SIGTERM).
            raise StopIteration

    def handle(self, listener, client, addr):
        client.settimeout(self.client_timeout)
        wrapped = _SilenceEnds(client)
        self.clients.add(wrapped)
        # GeventWorker.handle would make the socket blocking again, without a timeout.
        AsyncWorker.handle(self, listener, wrapped, addr)
