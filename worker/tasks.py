"""The jobs: answer a message, sweep for lost work. Both take ids only and are idempotent."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from models import Status
from models.coordination import messaging
from models.coordination.jobs import ANSWER_MESSAGE, DELIVER_WEBHOOK, ERASE_USER, FORGET, PING, REQUEST_ID_HEADER, SWEEP
from models.policy import backoff

from . import app, claims, forget, metrics, shutdown, sweeper, watch, webhooks
from .engine import PermanentEngineError, Reply, ReplyRequest, Reserved, TodoTools, TransientEngineError
from .runtime import Runtime, process_runtime

log = structlog.get_logger(__name__)


@worker_process_init.connect
def _fresh_runtime(**_kwargs: object) -> None:
    # A pool child must not share the parent's sockets; build its own on first use.
    process_runtime.cache_clear()
    # The main process tells its children of a shutdown with SIGUSR2, whose default is to end the
    # process: every child takes it as "stopping" from the start, whether or not it ever runs a job.
    shutdown.listen_for_stopping()


def ring(hint: uuid.UUID | None = None, request_id: str | None = None, countdown: float | None = None) -> None:
    """Send a doorbell: a job that makes a worker claim whatever message should start next. `hint`
    names the message it was rung for (Flower and the logs show it); the claim may take another.
    Not sent (Redis away): the sweeper rings again for every message that could start."""
    messaging.send_answer_job(app, hint or uuid.UUID(int=0), request_id, countdown=countdown)


# Postgres or Redis unreachable for a moment: worth retrying, with jittered exponential backoff.
# Anything else is a bug or a permanent condition and is not retried blindly.
TRANSIENT_INFRASTRUCTURE = (OperationalError, RedisConnectionError, RedisTimeoutError)


@app.task(
    name=ANSWER_MESSAGE,
    bind=True,
    autoretry_for=TRANSIENT_INFRASTRUCTURE,
    retry_backoff=backoff.BASE_SECONDS,  # Celery's own full-jitter backoff, with models/policy/backoff.py's numbers
    retry_backoff_max=backoff.CAP_SECONDS,
    retry_jitter=True,
    max_retries=8,
)
def answer_message(self: Task, message_id: str) -> str:
    """A doorbell: answer the message that should start next (`message_id` is the one it was rung
    for, which the fair order may put after another)."""
    structlog.contextvars.clear_contextvars()
    shutdown.install_in_child()  # a SIGTERM to the process group no longer kills a generation
    # The request id that accepted the message travels in the job's headers: one grep follows a
    # message from POST to reply.
    structlog.contextvars.bind_contextvars(
        task_id=self.request.id, rung_for=message_id, request_id=self.request.get(REQUEST_ID_HEADER)
    )
    try:
        done = _answer(uuid.UUID(message_id), self.request.get(REQUEST_ID_HEADER))
        # The job's result, as Flower shows it: what became of which message ("answered 1f0c…").
        return f"{done.outcome.value} {done.question.id}" if done.question is not None else done.outcome.value
    finally:
        structlog.contextvars.clear_contextvars()


class Outcome(StrEnum):
    NOTHING_TO_DO = "nothing_to_do"  # no message can start now (each is answered, busy, or waiting out a backoff)
    DEFERRED = "deferred"  # no model server had a free slot in time: the doorbell went back to the queue
    ANSWERED = "answered"
    REQUEUED = "requeued"  # a generation given back to the queue, to be tried again after a backoff
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped by the user: the text so far stored as its reply
    SUPERSEDED = "superseded"  # put back in the queue while generated (a regenerate): nothing stored
    LEASE_LOST = "lease_lost"  # another worker took the conversation over: it tells the clients


@dataclass(frozen=True)
class Done:
    """What a job did, for `_follow_up` to report and to send the conversation on its way."""

    outcome: Outcome
    lease: claims.Lease | None = None
    question: claims.Question | None = None
    gave_up: list[uuid.UUID] = field(default_factory=list)  # messages the claim failed for good
    committed: claims.Committed | None = None
    retry_in: float | None = None


def _answer(rung_for: uuid.UUID, request_id: str | None) -> Done:
    runtime = process_runtime()
    # Room on a model server first, then the claim: a message starts only when a server can take
    # it. While every slot is busy the messages wait in the queue (no lease held, cancellable, their
    # order by fair share intact), not in workers that claimed them.
    try:
        reserved = runtime.engine.reserve(stopping=lambda: shutdown.STOPPING.due(0))
    except TransientEngineError as busy:
        log.info("job_deferred", reason=str(busy))
        metrics.DUPLICATES.labels("no_model_slot").inc()
        ring(rung_for, request_id)
        return Done(Outcome.DEFERRED)
    try:
        done = _generate(runtime, reserved)
    finally:
        if reserved is not None:
            reserved.release()  # not used (nothing to claim), or used and given back already
    _follow_up(runtime, done)
    return done


def _generate(runtime: Runtime, reserved: Reserved | None) -> Done:
    """Claim the message that should start next, generate, and store the reply (or give the
    message back). Tells waiting clients only that the question is being answered."""
    claimed = claims.claim(runtime)
    lease, question = claimed.lease, claimed.question
    if lease is None or question is None:
        return Done(Outcome.NOTHING_TO_DO, lease, None, claimed.failed)
    structlog.contextvars.bind_contextvars(
        request_id=question.request_id,
        conversation_id=str(lease.conversation_id),
        message_id=str(question.id),
        user=question.user,
        attempt=question.attempt,
    )
    pieces = messaging.PiecePublisher(
        runtime.redis, lease.conversation_id, question.id, question.attempt, question.user)
    pieces.start()  # and waiting clients hear that the question is being answered
    started = time.perf_counter()
    error: str | None = None
    try:
        with watch.watching(runtime, lease, question) as cancellation, metrics.GENERATION.time():
            reply = runtime.engine.reply(ReplyRequest(
                user=question.user,
                conversation_id=lease.conversation_id,
                message_id=question.id,
                content=question.content,
                history=question.history,
                tools=TodoTools(runtime.db, question.user, question.id),
                on_delta=pieces,
                on_restart=pieces.restart,
                cancellation=cancellation,
                reserved=reserved,
            ))
    except (TransientEngineError, SoftTimeLimitExceeded) as interrupted:
        cause = str(interrupted) if isinstance(interrupted, TransientEngineError) else \
            "the generation ran past its time limit"
        log.warning("generation_interrupted", error=cause)
        metrics.RETRIES.inc()
        return _give_back(runtime, claimed, failed=False, error=cause, retry_in=backoff.full_jitter(question.attempt))
    except PermanentEngineError as permanent:
        log.warning("generation_failed", error=str(permanent))
        metrics.FAILURES.labels("permanent").inc()
        error = str(permanent)
    except TRANSIENT_INFRASTRUCTURE:
        raise  # Postgres or Redis trouble: the job is retried; the lease runs out for the sweeper
    except Exception:
        # A bug: fail the message with a reason a person can read instead of retrying it forever.
        log.exception("generation_crashed")
        metrics.FAILURES.labels("crashed").inc()
        error = "The assistant hit an internal error; retry later."
    else:
        if cancellation.reason == "shutdown":  # this worker is stopping: another one takes it over now
            metrics.RETRIES.inc()
            return _give_back(runtime, claimed, failed=False,
                              error="the worker generating it was stopped; trying again", retry_in=0.0)
        return _store(runtime, claimed, reply, time.perf_counter() - started)
    return _give_back(runtime, claimed, failed=True, error=error or "unknown")


def _store(runtime: Runtime, claimed: claims.Claim, reply: Reply, took_seconds: float) -> Done:
    """Commit the reply, and say what the question became (answered, or cancelled meanwhile with
    this text as its reply; nothing stored if the lease was lost or a regenerate superseded it)."""
    lease, question = claimed.lease, claimed.question
    assert lease is not None and question is not None
    for kind, tokens in (reply.usage or {}).items():
        metrics.TOKENS.labels(runtime.settings.llm_model, kind.removesuffix("_tokens")).inc(tokens)
    committed = claims.commit_reply(runtime, lease, question, reply)
    if committed is None:
        log.warning("reply_discarded", reason="lease_lost")
        return Done(Outcome.LEASE_LOST, lease, question, claimed.failed)
    outcome = COMMITTED_AS.get(committed.status, Outcome.SUPERSEDED)
    log.info(outcome.value, reply_seq=committed.seq, tools=[call["name"] for call in reply.tool_calls],
             finish=reply.finish, context=reply.context, usage=reply.usage, generation_ms=round(took_seconds * 1000, 1))
    return Done(outcome, lease, question, claimed.failed, committed=committed)


def _give_back(runtime: Runtime, claimed: claims.Claim, *, failed: bool, error: str,
               retry_in: float | None = None) -> Done:
    """Give the question back — queued again (tried after `retry_in`) or failed — and say what
    became of it: the lease may have been lost, or the question cancelled meanwhile."""
    assert claimed.lease is not None and claimed.question is not None
    given_back = claims.finish_unanswered(runtime, claimed.lease, claimed.question, failed=failed, error=error,
                                          retry_in=retry_in or 0.0)
    outcome = GIVEN_BACK_AS[given_back]
    return Done(outcome, claimed.lease, claimed.question, claimed.failed,
                retry_in=retry_in if outcome is Outcome.REQUEUED else None)


# What the question became at the reply's commit (claim_sql.COMMIT_REPLY), and when given back.
COMMITTED_AS = {Status.ANSWERED: Outcome.ANSWERED, Status.CANCELLED: Outcome.CANCELLED}
GIVEN_BACK_AS = {claims.GivenBack.QUEUED: Outcome.REQUEUED, claims.GivenBack.FAILED: Outcome.FAILED,
                 claims.GivenBack.CANCELLED: Outcome.CANCELLED, claims.GivenBack.SUPERSEDED: Outcome.SUPERSEDED,
                 claims.GivenBack.LEASE_LOST: Outcome.LEASE_LOST}

# The status waiting clients are told of the question once the job is done.
STATUS_AFTER = {Outcome.ANSWERED: Status.ANSWERED, Outcome.REQUEUED: Status.QUEUED, Outcome.FAILED: Status.FAILED,
                Outcome.CANCELLED: Status.CANCELLED, Outcome.SUPERSEDED: Status.QUEUED}


def _follow_up(runtime: Runtime, done: Done) -> None:
    """Count it, tell waiting clients, and ring for the conversation's next question."""
    for failed_id in done.gave_up:
        metrics.FAILURES.labels("gave_up").inc()
        if done.lease is not None:
            messaging.announce(runtime.redis, done.lease.conversation_id, failed_id, Status.FAILED.value)
    if done.outcome is Outcome.NOTHING_TO_DO:
        if done.lease is None:
            log.info("job_noop", reason="nothing_ready")
            metrics.DUPLICATES.labels("nothing_ready").inc()
        return
    assert done.lease is not None and done.question is not None
    metrics.CLAIMS.inc()
    metrics.QUEUE_WAIT.labels(done.question.lane.name.lower(), f"{done.question.weight:g}").observe(
        done.question.waited_seconds)
    if done.outcome is Outcome.LEASE_LOST:
        metrics.LEASE_LOST.inc()
    else:
        if done.outcome is Outcome.CANCELLED:
            metrics.CANCELLED.inc()
        messaging.announce(
            runtime.redis, done.lease.conversation_id, done.question.id, STATUS_AFTER[done.outcome].value,
            message=done.committed.message if done.committed is not None else None)
    if done.committed is not None:
        if done.outcome is Outcome.ANSWERED:
            metrics.REPLY_LATENCY.observe(done.committed.latency_seconds)
        # A user at MAX_GENERATIONS_PER_USER may have messages elsewhere that waited for this slot.
        if not done.committed.check_next and not runtime.settings.max_generations_per_user:
            return
    _ring_next(runtime, done.lease.conversation_id, done.question, done.retry_in)


def _ring_next(runtime: Runtime, conversation_id: uuid.UUID, question: claims.Question, retry_in: float | None) -> None:
    """The conversation's next unanswered message waited for our lease (or, for a generation given
    back to the queue, the same message waits out its backoff): ring for it."""
    following = claims.next_pending(runtime, conversation_id)
    if following is not None or runtime.settings.max_generations_per_user:
        ring(following, question.request_id, countdown=retry_in if following == question.id else None)


# Not retried: a sweep that meets an outage simply runs again at beat's next tick. It sends no task
# events: once a second, it would fill Flower's task history (10,000 rows) in under three hours.
@app.task(name=SWEEP, send_events=False)
def sweep() -> int:
    runtime = process_runtime()
    swept = sweeper.sweep(runtime)
    for conversation_id, message_id, status in swept.requeued:
        messaging.announce(runtime.redis, conversation_id, message_id, status)
    for conversation_id, message_id in swept.expired:
        messaging.announce(runtime.redis, conversation_id, message_id, Status.EXPIRED.value)
    metrics.REQUEUED.labels("lease_expired").inc(len(swept.requeued))
    metrics.EXPIRED.inc(len(swept.expired))
    metrics.PROMOTED.inc(swept.promoted)
    # A doorbell for each message that could start with no job waiting in the broker for it (Redis
    # lost the job, it was never sent, or its conversation was busy when it came).
    doorbells = sweeper.doorbells_missing(runtime, swept.ready, app.conf.task_default_queue)
    for _ in range(doorbells):
        ring()
    metrics.REQUEUED.labels("no_job_waiting").inc(doorbells)
    if swept.requeued or swept.expired or doorbells:
        log.info("swept", requeued=len(swept.requeued), expired=len(swept.expired), promoted=swept.promoted,
                 doorbells=doorbells)
    # Webhook deliveries due now (new events, retries, and what a lost job left behind).
    for delivery_id, claim in webhooks.claim_due(runtime):
        messaging.send_webhook_job(app, delivery_id, claim)
    return doorbells


@app.task(name=ERASE_USER, bind=True, autoretry_for=TRANSIENT_INFRASTRUCTURE, retry_backoff=backoff.BASE_SECONDS,
          retry_backoff_max=backoff.CAP_SECONDS, retry_jitter=True, max_retries=8)
def erase_user(self: Task, erasure_id: str) -> str:
    """DELETE /me, carried out: every row and Redis key of the user, in bounded batches. Repeated
    or run twice at once, it deletes nothing twice; given up, the forget round sends it again."""
    structlog.contextvars.bind_contextvars(task_id=self.request.id, erasure_id=erasure_id)
    try:
        runtime = process_runtime()
        erased = forget.erase(runtime, uuid.UUID(erasure_id))
        if erased is None:
            return "nothing to do"
        metrics.ERASURES.inc()
        for kind, count in erased.counts.items():
            metrics.FORGOTTEN.labels("erasure", kind).inc(count)
        return f"erased {sum(erased.counts.values())} rows and keys"
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name=FORGET, send_events=False)
def forget_round() -> int:
    """Retention (conversations idle past their lifetime), in bounded batches up to a round's
    worth, and the erasures no worker is carrying out sent again. Not retried: beat runs it again."""
    runtime = process_runtime()
    deleted = 0
    with runtime.db.connect() as connection:
        for _ in range(forget.RETENTION_ROUNDS):
            batch = forget.expire_conversations(connection, runtime.settings.retention_days)
            deleted += batch
            if batch < forget.RETENTION_BATCH:
                break
        unattended = [row.id for row in connection.execute(forget.UNATTENDED_ERASURES)]
    metrics.FORGOTTEN.labels("retention", "conversations").inc(deleted)
    for erasure_id in unattended:
        messaging.send_erasure_job(app, erasure_id)
    if deleted or unattended:
        log.info("forgot", conversations=deleted, erasures_resent=len(unattended))
    return deleted


# On the `webhooks` queue (models/coordination/messaging.py sends it there): only `-Q webhooks` workers run it.
@app.task(name=DELIVER_WEBHOOK, acks_late=True)
def deliver_webhook(delivery_id: str, claim: str) -> str:
    structlog.contextvars.bind_contextvars(task_id=deliver_webhook.request.id, delivery_id=delivery_id)
    try:
        return webhooks.deliver(process_runtime(), delivery_id, claim)
    finally:
        structlog.contextvars.clear_contextvars()


@app.task(name=PING, ignore_result=True)
def ping(reply_to: str) -> None:
    """Answer on a Redis list: operators' and the benchmark's check of the bare queue round trip
    (broker -> worker -> Redis), with no Postgres and no engine."""
    client = process_runtime().redis
    client.lpush(reply_to, "pong")
    client.expire(reply_to, 60)
