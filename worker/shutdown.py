"""A worker told to stop never strands a conversation.

Process managers stop a worker in one of two ways: SIGTERM to its main process (`docker stop`,
Kubernetes), or SIGTERM to its whole process group (systemd's default `KillMode=control-group`,
supervisord's `stopasgroup`). Celery's main process answers SIGTERM with a warm shutdown — it takes
no new job and waits for the running ones — but a pool child dies of SIGTERM at once, so a group
signal used to kill every generation mid-way, leaving its conversation leased by a dead process.

Here both ways mean the same: each pool child treats its first SIGTERM (or the main process's
SIGUSR2, sent when the main process begins its shutdown) as "stopping", and carries on. A generation
still running `WORKER_SHUTDOWN_GRACE_SECONDS` after that gives its message back — the lease released
with its fencing token, the message queued and sent again at once — so another worker starts it
immediately, long before the platform's grace period ends in SIGKILL. A second SIGTERM (Celery's own
cold shutdown) ends the child as before.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType
from typing import Any

from billiard.process import active_children

STOPPING_SIGNAL = signal.SIGUSR2  # main process -> pool children: "we are stopping"


class Stopping:
    """When this process was told to stop (a lifecycle flag of the process, not user data). Set from
    signal handlers, so it takes no lock: a handler can interrupt another one (SIGTERM's, by the
    main process's SIGUSR2 a moment later) in the same thread, and a lock held by the interrupted
    handler would never be released — the child would hang, and its worker with it. Two handlers
    racing here both write "now"."""

    def __init__(self) -> None:
        self._since: float | None = None
        self.terms = 0
        self.previous_term: Any = None  # billiard's handler, which ends a pool child cleanly

    def begin(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def due(self, grace_seconds: float) -> bool:
        """Whether a generation still running should give its message back now."""
        since = self._since
        return since is not None and time.monotonic() - since >= grace_seconds


STOPPING = Stopping()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGTERM:
        STOPPING.terms += 1
        if STOPPING.terms > 1:  # a second SIGTERM (Celery's cold shutdown): end as billiard ends a child
            previous = STOPPING.previous_term
            signal.signal(signal.SIGTERM, previous if callable(previous) else signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return
    STOPPING.begin()


def listen_for_stopping() -> None:
    """At a pool child's start (worker_process_init): the main process's SIGUSR2 means "stopping".
    (billiard leaves SIGUSR2 alone after this signal; SIGTERM it replaces, see install_in_child.)"""
    signal.signal(STOPPING_SIGNAL, _on_signal)


def install_in_child() -> None:
    """In a pool child, before a generation: from now on SIGTERM means "stopping". (Not at
    worker_process_init: billiard installs its own exit handlers after that signal.) Runs in the
    child's main thread, where Celery's prefork pool runs a job."""
    if signal.getsignal(signal.SIGTERM) is _on_signal:
        return
    STOPPING.previous_term = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(STOPPING_SIGNAL, _on_signal)


def tell_children() -> None:
    """In the main process, as its shutdown begins (inside Celery's signal handler: no logging here,
    whose locks the interrupted code may hold): its pool children hear of it even when only the
    main process was signalled."""
    for child in active_children():
        try:
            os.kill(child.pid, STOPPING_SIGNAL)
        except (ProcessLookupError, TypeError):
            continue
