"""The thread beside every generation: it renews the conversation's lease, and stops the
generation when its question is cancelled (from any web node) or when this worker is stopping."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from redis.client import PubSub
from redis.exceptions import RedisError

from models import Status
from models.coordination.signals import cancel_channel

from . import claim_sql
from .claims import Lease, Question
from .engine import Cancellation
from .runtime import Runtime
from .shutdown import STOPPING

log = structlog.get_logger(__name__)


# What a question being generated reads once a user stopped it (`cancelled`: as a web node of the
# release before `cancelling` wrote it, during a rolling deploy).
STOPPED = frozenset({Status.CANCELLING, Status.CANCELLED})
# How often a generation's watcher looks for a cancel when Redis cannot tell it (and the longest a
# cancel may take to stop a generation when Redis is down).
CANCEL_CHECK_SECONDS = 1.0
# A generation over sooner than this (the built-in engine's take milliseconds) costs its watcher
# nothing: no Redis subscription, no read. One still running is then watched as below.
QUIET_START_SECONDS = 0.25


@contextmanager
def watching(runtime: Runtime, lease: Lease, question: Question) -> Iterator[Cancellation]:
    """While a generation runs: renew its lease every third of its length (a slow but live
    generation keeps it; a dead worker stops renewing and its lease runs out), and stop it when
    its question is cancelled — told at once by Redis (cancel_channel), confirmed in Postgres,
    which every renewal also reads in case the notification was lost — or when this worker has
    been stopping for longer than WORKER_SHUTDOWN_GRACE_SECONDS (worker/shutdown.py)."""
    watcher = Watcher(runtime, lease, question)
    # A daemon thread, not joined: it may sit in a one-second read of Redis when the generation
    # ends, and must not add that to every reply. It checks `stop` before every write, and a
    # renewal of a lease already released does nothing (claim_sql.RENEW).
    threading.Thread(target=watcher.run, name="generation-watch", daemon=True).start()
    try:
        yield watcher.cancellation
    finally:
        watcher.stop.set()


_LOST = object()


class Watcher:
    """One generation's watch: `run` in its own thread until `stop` is set, the question is
    stopped (then `cancellation` is cancelled), the lease is lost or the worker is stopping."""

    def __init__(self, runtime: Runtime, lease: Lease, question: Question) -> None:
        self.runtime, self.lease, self.question = runtime, lease, question
        self.cancellation = Cancellation()
        self.stop = threading.Event()
        self.renew_at = time.monotonic() + runtime.settings.lease_seconds / 3

    def run(self) -> None:
        if self.stop.wait(QUIET_START_SECONDS):
            return
        pubsub = _subscribe(self.runtime, self.question.id)
        try:
            # A cancel committed before the subscription was published to nobody: Postgres is
            # read once right after it, then on every notification.
            notified = True
            while not self.stop.is_set():
                if not notified:
                    notified = _notified(pubsub) if pubsub is not None else not self.stop.wait(CANCEL_CHECK_SECONDS)
                if self.stop.is_set():
                    return
                if STOPPING.due(self.runtime.settings.worker_shutdown_grace_seconds):
                    log.warning("generation_given_back", reason="worker_stopping")
                    self.cancellation.cancel(reason="shutdown")
                    return
                status, notified = self._check(notified), False
                if status is _LOST:
                    log.warning("lease_lost", conversation_id=str(self.lease.conversation_id))
                    return
                if status in STOPPED:
                    log.info("generation_cancelled")
                    self.cancellation.cancel()
                    return
        finally:
            if pubsub is not None:
                pubsub.close()

    def _check(self, notified: bool) -> object:
        """The question's status, by the lease's renewal when one is due, else by a read when a
        notification came; None when neither was due or the check failed (a failed check must not
        stop the generation: the next one may work). _LOST when the lease is no longer ours."""
        try:
            if time.monotonic() >= self.renew_at:
                self.renew_at = time.monotonic() + self.runtime.settings.lease_seconds / 3
                return _renew(self.runtime, self.lease, self.question)
            if notified:
                with self.runtime.db.connect() as connection:
                    return connection.execute(claim_sql.QUESTION_STATUS,
                                              {"question_id": self.question.id}).scalar_one_or_none()
        except Exception as error:
            log.warning("lease_renewal_failed", error=str(error).splitlines()[0])
        return None


def _renew(runtime: Runtime, lease: Lease, question: Question) -> object:
    with runtime.db.connect() as connection:
        row = connection.execute(claim_sql.RENEW, {
            "conversation": lease.conversation_id, "version": lease.version,
            "lease": runtime.settings.lease_seconds, "question_id": question.id}).first()
    return _LOST if row is None else row.status


def _subscribe(runtime: Runtime, question_id: uuid.UUID) -> PubSub | None:
    try:
        pubsub = runtime.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(cancel_channel(question_id))
    except RedisError as error:
        log.warning("cancel_subscribe_failed", error=str(error))
        return None
    return pubsub


def _notified(pubsub: PubSub) -> bool:
    """Whether a cancel notification came within CANCEL_CHECK_SECONDS (True also when Redis broke:
    then Postgres is asked instead)."""
    try:
        return pubsub.get_message(timeout=CANCEL_CHECK_SECONDS) is not None
    except (RedisError, OSError):
        time.sleep(CANCEL_CHECK_SECONDS)
        return True
