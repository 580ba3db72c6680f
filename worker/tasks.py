"""The jobs: answer a message, sweep for lost work. Both take ids only and are idempotent."""

from __future__ import annotations

import gc
import random
import time
import uuid

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from models import Status, messaging
from models.jobs import ANSWER_MESSAGE, PING, REQUEST_ID_HEADER, SWEEP
from models.queries import parse_uuid

from . import app, claims, metrics, sweeper
from .engine import PermanentEngineError, ReplyRequest, TodoTools, TransientEngineError
from .runtime import Runtime, runtime

log = structlog.get_logger(__name__)
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0


@worker_process_init.connect
def _fresh_runtime(**_kwargs: object) -> None:
    # A pool child must not share the parent's sockets; build its own on first use.
    runtime.cache_clear()
    # What the child inherited (Celery, SQLAlchemy, the modules) lives as long as it does: keep the
    # garbage collector's full collections from walking it on every long history. Without this, a
    # 10,000-message history set off full collections of 30-50 ms (bench/matrix.py, py-spy).
    gc.freeze()


def _backoff(attempt: int) -> float:
    """Full jitter: spread retries of many messages instead of sending them back together."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))


def enqueue(message_id: uuid.UUID, request_id: str | None = None, countdown: float | None = None) -> None:
    # Not sent (Redis away): the message stays queued in Postgres and the sweeper sends it again.
    messaging.send_answer_job(app, message_id, request_id, countdown=countdown)


# Postgres or Redis unreachable for a moment: worth retrying, with jittered exponential backoff.
# Anything else is a bug or a permanent condition and is not retried blindly.
TRANSIENT_INFRASTRUCTURE = (OperationalError, RedisConnectionError, RedisTimeoutError)


@app.task(
    name=ANSWER_MESSAGE,
    bind=True,
    autoretry_for=TRANSIENT_INFRASTRUCTURE,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=8,
)
def answer_message(self: Task, message_id: str) -> None:
    structlog.contextvars.clear_contextvars()
    # The request id that accepted the message travels in the job's headers: one grep follows a
    # message from POST to reply.
    structlog.contextvars.bind_contextvars(
        task_id=self.request.id, message_id=message_id, request_id=self.request.get(REQUEST_ID_HEADER)
    )
    try:
        _answer(message_id)
    finally:
        structlog.contextvars.clear_contextvars()


def _answer(message_id: str) -> None:
    rt = runtime()
    parsed = parse_uuid(message_id)
    claimed = claims.claim(rt, parsed) if parsed is not None else claims.Claim(None, None, [], "answered_or_unknown")
    lease, question = claimed.lease, claimed.question
    for failed_id in claimed.failed:
        metrics.FAILURES.labels("gave_up").inc()
        if lease is not None:
            messaging.announce(rt.redis, lease.conversation_id, failed_id, Status.FAILED.value)
    if lease is None:
        log.info("job_noop", reason=claimed.noop_reason)
        metrics.DUPLICATES.labels(claimed.noop_reason or "answered_or_unknown").inc()
        return
    conversation_id = lease.conversation_id
    if question is None:
        return
    structlog.contextvars.bind_contextvars(
        request_id=question.request_id,
        conversation_id=str(conversation_id),
        message_id=str(question.id),
        user=question.user,
        attempt=question.attempt,
    )
    messaging.announce(rt.redis, conversation_id, question.id, Status.PROCESSING.value)
    metrics.CLAIMS.inc()
    metrics.QUEUE_WAIT.observe(question.waited_seconds)
    retry_in: float | None = None
    # What waiting clients are told if no reply is committed (None: nothing they need to hear).
    now: Status | None = None
    request = ReplyRequest(
        user=question.user,
        conversation_id=conversation_id,
        message_id=question.id,
        content=question.content,
        history=question.history,
        tools=TodoTools(rt.db, question.user, question.id),
        on_delta=messaging.delta_publisher(rt.redis, conversation_id, question.id, question.attempt),
    )
    started = time.perf_counter()
    try:
        with claims.renewing(rt, lease), metrics.GENERATION.time():
            reply = rt.engine.reply(request)
    except (TransientEngineError, SoftTimeLimitExceeded) as error:
        log.warning("generation_interrupted", error=str(error) or type(error).__name__)
        metrics.RETRIES.inc()
        if claims.finish_unanswered(rt, lease, question, error=None):
            retry_in, now = _backoff(question.attempt), Status.QUEUED
    except PermanentEngineError as error:
        log.warning("generation_failed", error=str(error))
        metrics.FAILURES.labels("permanent").inc()
        if claims.finish_unanswered(rt, lease, question, error=str(error)):
            now = Status.FAILED
    except TRANSIENT_INFRASTRUCTURE:
        raise  # Postgres or Redis trouble: the job is retried; the lease runs out for the sweeper
    except Exception:
        # A bug: fail the message with a reason a person can read instead of retrying it forever.
        log.exception("generation_crashed")
        metrics.FAILURES.labels("crashed").inc()
        if claims.finish_unanswered(rt, lease, question, error="The assistant hit an internal error; retry later."):
            now = Status.FAILED
    else:
        committed = claims.commit_reply(rt, lease, question, reply)
        if committed is None:
            log.warning("reply_discarded", reason="lease_lost")
            metrics.LEASE_LOST.inc()
        else:
            metrics.REPLY_LATENCY.observe(committed.latency_seconds)
            log.info("answered", reply_seq=committed.seq, tools=[call["name"] for call in reply.tool_calls],
                     generation_ms=round((time.perf_counter() - started) * 1000, 1))
            messaging.announce(rt.redis, conversation_id, question.id, Status.ANSWERED.value)
            if committed.check_next:  # else nothing was waiting for this conversation's lease
                _send_next(rt, conversation_id, question, None)
            return
    if now is not None:  # a lost lease: the worker that took it over tells them
        messaging.announce(rt.redis, conversation_id, question.id, now.value)
    _send_next(rt, conversation_id, question, retry_in)


def _send_next(rt: Runtime, conversation_id: uuid.UUID, question: claims.Question, retry_in: float | None) -> None:
    """The conversation's next unanswered message waited for our lease: send it on its way (or,
    for a generation given back to the queue, the same message again after its backoff)."""
    following = claims.next_pending(rt, conversation_id)
    if following is not None:
        enqueue(following, question.request_id, countdown=retry_in if following == question.id else None)


# Not retried: a sweep that meets an outage simply runs again at beat's next tick.
@app.task(name=SWEEP)
def sweep() -> int:
    due = sweeper.sweep(runtime())
    for message_id, reason in due:
        enqueue(message_id)
        metrics.REQUEUED.labels(reason).inc()
    if due:
        log.info("sweep_requeued", count=len(due))
    return len(due)


@app.task(name=PING, ignore_result=True)
def ping(reply_to: str) -> None:
    """Answer on a Redis list: operators' and the benchmark's check of the bare queue round trip
    (broker -> worker -> Redis), with no Postgres and no engine."""
    client = runtime().redis
    client.lpush(reply_to, "pong")
    client.expire(reply_to, 60)
