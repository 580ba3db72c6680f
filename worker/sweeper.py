"""The sweeper: Postgres is the truth, Redis only rings doorbells.

Once a second (beat), it takes expired leases away from workers presumed dead (their questions
queue again, keeping their place), ends the messages whose `expires_in` ran out (`expired`), moves
batch messages that have waited long enough into the interactive lane, and counts the messages
that could start now: the task then rings a doorbell for each one that has no job waiting in the
broker (Redis lost it, the publish after the commit failed, or its job came while its conversation
was busy). Several sweepers may run at once: a transaction-scoped advisory lock lets one of them
work per round.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import delete, func, select

from models import IdempotentRequest

from . import claim_sql
from .runtime import Runtime

SWEEP_LOCK = 7_362_201  # an arbitrary, fixed advisory-lock key for "a sweep is running"
IDEMPOTENCY_KEEP = timedelta(hours=48)  # the contract promises at least 24 hours
BATCH = 500  # the most of each kind one round handles: a round holds its locks briefly
EXPIRED_ERROR = "Not started before its expires_in ran out; it was never generated."


@dataclass(frozen=True)
class Swept:
    # (conversation, message, what it is now: queued again, or cancelled if its user had stopped it)
    requeued: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    expired: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (conversation, message)
    promoted: int = 0
    ready: int = 0  # messages that could start now (counted up to BATCH)


def sweep(runtime: Runtime) -> Swept:
    with runtime.sessions.begin() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK))):
            return Swept()
        connection = session.connection()
        requeued = [(row.conversation_id, row.id, row.status)
                    for row in connection.execute(claim_sql.REVOKE_EXPIRED_LEASES, {"most": BATCH})]
        expired = [(row.conversation_id, row.id)
                   for row in connection.execute(claim_sql.EXPIRE, {"most": BATCH, "reason": EXPIRED_ERROR})]
        promoted = len(connection.execute(claim_sql.PROMOTE_AGED_BATCH, {
            "most": BATCH, "age": runtime.settings.batch_age_seconds}).all())
        session.execute(delete(IdempotentRequest).where(
            IdempotentRequest.created_at < func.now() - IDEMPOTENCY_KEEP))
    # After the commit: what the statements above made ready is counted too.
    with runtime.db.connect() as connection:
        ready = connection.execute(claim_sql.READY_COUNT, {"most": BATCH}).scalar_one()
    return Swept(requeued, expired, promoted, ready)


def doorbells_missing(runtime: Runtime, ready: int, queue: str) -> int:
    """How many of `ready` messages have no job waiting for them in the broker's queue. A doorbell
    too many is harmless (its claim finds nothing); one too few leaves a message waiting a round."""
    if not ready:
        return 0
    try:
        waiting = runtime.redis.llen(queue)
    except RedisError:
        return 0  # the doorbells could not be rung either; the next round tries again
    return max(0, ready - int(waiting))
