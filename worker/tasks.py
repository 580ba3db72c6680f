"""The jobs: answer a message, sweep for lost work. Both take ids only and are idempotent."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import structlog
from celery import Task
from celery.signals import worker_process_init
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from models import Status
from models.coordination import messaging
from models.coordination.jobs import ANSWER_MESSAGE, DELIVER_WEBHOOK, ERASE_USER, FORGET, PING, REQUEST_ID_HEADER, SWEEP
from models.policy import backoff

from . import app, claims, forget, metrics, shutdown, sweeper, time_limits, watch, webhooks
from .engine import AppRequest, PermanentEngineError, Reply, ReplyRequest, Reserved, TodoTools, TransientEngineError
from .outcomes import Answered, Cancelled, Deferred, Done, Failed, LeaseLost, NothingToDo, Requeued, Settled, Superseded
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
        return f"{done.outcome} {done.claimed.question.id}" if isinstance(done, Settled) else done.outcome
    finally:
        structlog.contextvars.clear_contextvars()




def _answer(rung_for: uuid.UUID, request_id: str | None) -> Done:
    runtime = process_runtime()
    # Room on a model server first, then the claim: a message starts only when a server can take
    # it. While every slot is busy the messages wait in the queue (no lease held, cancellable, their
    # order by fair share intact), not in workers that claimed them.
    try:
        reserved = runtime.engine.reserve(stopping=lambda: shutdown.STOPPING.due(0))
    except TransientEngineError as busy:
        log.info("job_deferred", reason=str(busy))
        metrics.DEFERRED.labels("no_model_slot").inc()
        ring(rung_for, request_id)
        return Deferred()
    try:
        claimed = claims.claim(runtime)
        done = _generate(runtime, claimed, reserved) if isinstance(claimed, claims.Claimed) else NothingToDo(claimed)
    finally:
        if reserved is not None:
            reserved.release()  # not used (nothing to claim), or used and given back already
    _follow_up(runtime, done)
    return done


def _generate(runtime: Runtime, claimed: claims.Claimed, reserved: Reserved | None) -> Settled:
    """Generate the claimed question's reply and store it, or give the question back. Tells
    waiting clients only that the question is being answered."""
    lease, question = claimed.lease, claimed.question
    structlog.contextvars.bind_contextvars(
        request_id=question.request_id,
        conversation_id=str(lease.conversation_id),
        message_id=str(question.id),
        user=question.user,
        attempt=question.attempt,
    )
    pieces = messaging.PiecePublisher(
        runtime.redis, lease.conversation_id, question.id, question.attempt, question.user)
    written = pieces.start()  # and waiting clients hear that the question is being answered
    started = time.perf_counter()
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
                written=written,
                app=AppRequest.of(question.options),
                tool_outputs=question.tool_outputs,
                cancellation=cancellation,
                reserved=reserved,
            ))
    except PermanentEngineError as permanent:
        log.warning("generation_failed", error=str(permanent))
        metrics.FAILURES.labels("permanent").inc()
        return _give_back(runtime, claimed, error=str(permanent) or "unknown", failed=True)
    except TRANSIENT_INFRASTRUCTURE:
        raise  # Postgres or Redis trouble: the job is retried; the lease runs out for the sweeper
    except Exception as error:
        if isinstance(error, TransientEngineError) or time_limits.ran_out(error):
            cause = str(error) if isinstance(error, TransientEngineError) else "the generation ran past its time limit"
            log.warning("generation_interrupted", error=cause)
            metrics.RETRIES.inc()
            return _give_back(runtime, claimed, error=cause, retry_in=backoff.full_jitter(question.attempt))
        # A bug: fail the message with a reason a person can read instead of retrying it forever.
        log.exception("generation_crashed")
        metrics.FAILURES.labels("crashed").inc()
        return _give_back(runtime, claimed, error="The assistant hit an internal error; retry later.", failed=True)
    if cancellation.reason == "shutdown":  # this worker is stopping: another one takes it over now
        metrics.RETRIES.inc()
        return _give_back(runtime, claimed, error="the worker generating it was stopped; trying again", retry_in=0.0)
    reply = dataclasses.replace(reply, pieces=pieces.lengths(reply.content))
    return _store(runtime, claimed, reply, time.perf_counter() - started)


def _store(runtime: Runtime, claimed: claims.Claimed, reply: Reply, took_seconds: float) -> Settled:
    """Commit the reply, and say what the question became (answered, or cancelled meanwhile with
    this text as its reply; nothing stored if the lease was lost or a regenerate superseded it)."""
    for kind, tokens in (reply.usage or {}).items():
        metrics.TOKENS.labels(runtime.settings.llm_model, kind.removesuffix("_tokens")).inc(tokens)
    committed = claims.commit_reply(runtime, claimed.lease, claimed.question, reply)
    if committed is None:
        log.warning("reply_discarded", reason="lease_lost")
        return LeaseLost(claimed)
    settled: Settled
    if committed.status is Status.ANSWERED:
        settled = Answered(claimed, committed)
    elif committed.status is Status.CANCELLED:
        settled = Cancelled(claimed)
    else:
        settled = Superseded(claimed)
    log.info(settled.outcome, reply_seq=committed.seq, tools=[call["name"] for call in reply.tool_calls],
             finish=reply.finish, context=reply.context, usage=reply.usage, generation_ms=round(took_seconds * 1000, 1))
    return settled


def _give_back(runtime: Runtime, claimed: claims.Claimed, *, error: str, failed: bool = False,
               retry_in: float = 0.0) -> Settled:
    """Give the question back — queued again (tried after `retry_in`) or failed — and say what
    became of it: the lease may have been lost, or the question cancelled or superseded meanwhile."""
    return claims.finish_unanswered(runtime, claimed, failed=failed, error=error, retry_in=retry_in)


def _follow_up(runtime: Runtime, done: Done) -> None:
    """Count it, tell waiting clients, and ring for the conversation's next question."""
    match done:
        case Deferred():
            return
        case NothingToDo(nothing=nothing):
            _announce_given_up(runtime, nothing.conversation_id, nothing.gave_up)
            if nothing.conversation_id is None:
                log.info("job_noop", reason="nothing_ready")
                metrics.DUPLICATES.labels("nothing_ready").inc()
            return
    lease, question = done.claimed.lease, done.claimed.question
    _announce_given_up(runtime, lease.conversation_id, done.claimed.gave_up)
    metrics.CLAIMS.inc()
    metrics.QUEUE_WAIT.labels(question.lane.name.lower(), f"{question.weight:g}").observe(question.waited_seconds)
    # What waiting clients are told the question is now (a lost lease: whoever holds it tells them),
    # and, when answered, the message as just committed (their long-polls answer with it).
    status: Status | None
    message: dict[str, Any] | None = None
    match done:
        case Answered(committed=committed):
            metrics.REPLY_LATENCY.observe(committed.latency_seconds)
            status, message = Status.ANSWERED, committed.message
        case Cancelled():
            metrics.CANCELLED.inc()
            status = Status.CANCELLED
        case Failed():
            status = Status.FAILED
        case Requeued() | Superseded():
            status = Status.QUEUED
        case LeaseLost():
            metrics.LEASE_LOST.inc()
            status = None
    if status is not None:
        messaging.announce(runtime.redis, lease.conversation_id, question.id, status.value, message=message)
    if isinstance(done, Answered) and not done.committed.check_next and not runtime.settings.max_generations_per_user:
        return  # nothing else waits in the conversation, nor (without a per-user cap) for this slot
    _ring_next(runtime, lease.conversation_id, question, done.retry_in if isinstance(done, Requeued) else None)


def _announce_given_up(runtime: Runtime, conversation_id: uuid.UUID | None, gave_up: list[uuid.UUID]) -> None:
    for failed_id in gave_up:
        metrics.FAILURES.labels("gave_up").inc()
        if conversation_id is not None:
            messaging.announce(runtime.redis, conversation_id, failed_id, Status.FAILED.value)


def _ring_next(runtime: Runtime, conversation_id: uuid.UUID, question: claims.Question, retry_in: float | None) -> None:
    """The conversation's next unanswered message waited for our lease (or, for a generation given
    back to the queue, the same message waits out its backoff); a user at MAX_GENERATIONS_PER_USER
    may have messages elsewhere that waited for this slot: ring for it."""
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
