"""The sweeper: Postgres is the truth, Redis only wakes workers.

It finds conversations whose earliest unanswered message has no live job — queued for longer
than `requeue_after_seconds` (Redis lost the job, or the enqueue after the commit failed), or
`processing` under an expired lease (its worker died) — and enqueues a job for each. Several
sweepers may run at once: a transaction-scoped advisory lock lets one of them work per round.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, func, select, text, update

from models import PENDING_SQL, IdempotentRequest, Message

from .runtime import Runtime

SWEEP_LOCK = 7_362_201  # an arbitrary, fixed advisory-lock key for "a sweep is running"
IDEMPOTENCY_KEEP = timedelta(hours=48)  # the contract promises at least 24 hours
BATCH = 500

# Each conversation's earliest pending message (the statuses as the partial index says them).
_STALE_SQL = f"""
    SELECT DISTINCT ON (m.conversation_id) m.id, m.status, m.enqueued_at, c.lease_expires_at
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.{PENDING_SQL}
    ORDER BY m.conversation_id, m.seq
    """
STALE = text(_STALE_SQL)


def sweep(rt: Runtime) -> list[tuple[uuid.UUID, str]]:
    """Returns (message id, reason) for each message to enqueue again, already marked as enqueued
    now; the reason is `lease_expired` or `queued_too_long`."""
    requeue_after = timedelta(seconds=rt.settings.requeue_after_seconds)
    with rt.sessions.begin() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(SWEEP_LOCK))):
            return []
        now = session.scalar(select(func.now()))
        due = []
        for row in session.execute(STALE):
            leased = row.lease_expires_at is not None and row.lease_expires_at > now
            if leased:
                continue  # a live worker holds the conversation and will carry on with it
            if row.status == "processing":
                due.append((row.id, "lease_expired"))
            elif row.enqueued_at is None or row.enqueued_at < now - requeue_after:
                due.append((row.id, "queued_too_long"))
            if len(due) >= BATCH:
                break
        if due:
            session.execute(update(Message).where(Message.id.in_([i for i, _ in due])).values(enqueued_at=func.now()))
        session.execute(delete(IdempotentRequest).where(IdempotentRequest.created_at < now - IDEMPOTENCY_KEEP))
    return due
